//! The command line: parse, run, print the error once, choose the exit code.

use crate::bench::{self, BenchError, BenchOptions};
use crate::estimate::cuda::{self as cuda_est, CudaOverheads};
use crate::estimate::{self, Backend, EngineProfile, Phase, Workload};
use crate::plan::Grid;
use crate::report;
use crate::runner::{DeviceKind, WeightsSource};
use crate::spec::{DType, ModelSpec, SpecError};
use crate::store;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// `print!` to stdout that never panics: when stdout is closed (`vramprobe ... | head`) the
/// rest of the output is dropped and the command goes on (a bench still writes its report).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `println!` to stdout that never panics (see `out!`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// How much memory does this LLM really need? Estimates from config.json, checked
/// against real forward passes.
#[derive(Debug, Parser)]
#[command(name = "vramprobe", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Estimate memory for a model, batch and context from its config.json (instant).
    Estimate(EstimateArgs),
    /// Load a model with candle, run real forward passes over a grid of batch x context,
    /// and compare the measured peaks with the estimate, point by point.
    Bench(BenchArgs),
    /// The GPU catalogue: memory as NVML reports it, compute capability, bf16.
    Gpus(GpusArgs),
    /// Which GPUs a model fits on at a batch and context, how far it stretches on each,
    /// and how many it needs with tensor parallelism.
    Fit(FitArgs),
    /// Re-render the report of a stored run (Markdown, HTML or JSON) from its files, or
    /// compare two runs.
    Report(ReportArgs),
    /// The daemon for Prometheus: GPU memory (NVML), stored benchmark results, sweeps on
    /// request. Every flag can also be set from the environment (VRAMPROBE_*).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on (beyond loopback, --token is required).
    #[arg(long, env = "VRAMPROBE_LISTEN", default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::serve::DEFAULT_PORT)))]
    pub listen: std::net::SocketAddr,
    /// Bearer token that POST /api/v1/bench requires (at least 16 characters).
    #[arg(long, env = "VRAMPROBE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where runs are stored and read.
    #[arg(long, env = "VRAMPROBE_RUNS_DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    /// How often NVML is polled (metrics are built from the last poll).
    #[arg(long, env = "VRAMPROBE_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: std::time::Duration,
    /// Export each GPU process's memory (opt-in: PIDs churn, and so do series).
    #[arg(long, env = "VRAMPROBE_PER_PROCESS")]
    pub per_process: bool,
    /// FAKE NVML for machines without a GPU: devices read from this JSON file at every poll.
    #[arg(long, env = "VRAMPROBE_FAKE_NVML")]
    pub fake_nvml: Option<PathBuf>,
    /// Run a sweep when the daemon starts.
    #[arg(long, env = "VRAMPROBE_BENCH_ON_START")]
    pub bench_on_start: bool,
    /// Run a sweep this often (e.g. 6h); skipped while one runs.
    #[arg(long, env = "VRAMPROBE_BENCH_EVERY", value_parser = parse_duration)]
    pub bench_every: Option<std::time::Duration>,
    /// Sweeps' model where a request does not name one [default: the built-in tiny Llama].
    #[arg(long, env = "VRAMPROBE_BENCH_MODEL")]
    pub bench_model: Option<String>,
    /// Sweeps' dtype [default: bench's].
    #[arg(long, env = "VRAMPROBE_BENCH_DTYPE")]
    pub bench_dtype: Option<String>,
    /// Sweeps' device, cpu or cuda [default: bench's].
    #[arg(long, env = "VRAMPROBE_BENCH_DEVICE")]
    pub bench_device: Option<String>,
    /// Sweeps' batch sizes, comma-separated [default: bench's].
    #[arg(long, env = "VRAMPROBE_BENCH_BATCH", value_delimiter = ',')]
    pub bench_batch: Option<Vec<u64>>,
    /// Sweeps' contexts, comma-separated [default: bench's].
    #[arg(long, env = "VRAMPROBE_BENCH_CONTEXT", value_delimiter = ',')]
    pub bench_context: Option<Vec<u64>>,
    /// Sweeps' decode steps [default: bench's].
    #[arg(long, env = "VRAMPROBE_BENCH_DECODE_STEPS")]
    pub bench_decode_steps: Option<u64>,
    /// Sweeps' mode, inference or train [default: bench's, inference].
    #[arg(long, env = "VRAMPROBE_BENCH_MODE")]
    pub bench_mode: Option<String>,
    /// Longest a client may take to send a request's headers (slow clients are cut off).
    #[arg(long, env = "VRAMPROBE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: std::time::Duration,
    /// Longest a request may take.
    #[arg(long, env = "VRAMPROBE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: std::time::Duration,
    /// At shutdown, how long a running sweep may take to finish its point before it is
    /// killed (what it stored is kept either way).
    #[arg(long, env = "VRAMPROBE_SHUTDOWN_GRACE", default_value = "120s", value_parser = parse_duration)]
    pub shutdown_grace: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("\"{s}\": {e} (e.g. 500ms, 5s, 6h)"))
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A run directory written by `bench`.
    #[arg(required_unless_present = "compare")]
    pub run_dir: Option<PathBuf>,
    /// What changed between two runs (two GPUs, two versions): B against A.
    #[arg(long, num_args = 2, value_names = ["RUN_A", "RUN_B"], conflicts_with = "run_dir")]
    pub compare: Option<Vec<PathBuf>>,
    /// md (Markdown), html (one self-contained page; not for --compare) or json.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
    Json,
}

/// What to estimate, and for training, how.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// `inference` (prefill + decode) or `train` (one optimizer step over batch x context).
    #[arg(long, value_enum, default_value_t = ModeArg::Inference)]
    pub mode: ModeArg,
    /// Training: adamw (mixed precision, fp32 master and moments), adamw-bf16, adamw-8bit, sgd.
    #[arg(long, default_value = "adamw")]
    pub optimizer: crate::estimate::train::Optimizer,
    /// Training: activation checkpointing none, selective (attention core), full.
    #[arg(long, default_value = "none")]
    pub checkpointing: crate::estimate::train::Checkpointing,
    /// Training: LoRA rank (adapters only are trained; with --quant int4 this is QLoRA).
    #[arg(long)]
    pub lora_rank: Option<u64>,
    /// Training: LoRA target modules, comma-separated (q, k, v, o, gate, up, down).
    #[arg(long, value_delimiter = ',', default_value = "q,v")]
    pub lora_targets: Vec<crate::estimate::train::Target>,
    /// Training: ZeRO stage 0-3 over --gpus.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub zero: u8,
    /// Training: data-parallel GPUs the ZeRO stage shards over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub gpus: u64,
}

impl TrainArgs {
    fn setup(
        &self,
        quant: crate::estimate::Quant,
    ) -> anyhow::Result<crate::estimate::train::TrainSetup> {
        use crate::estimate::train::{Lora, TrainSetup};
        if self.lora_rank == Some(0) {
            return Err(BadInput("--lora-rank 0: a rank must be at least 1".into()).into());
        }
        Ok(TrainSetup {
            optimizer: self.optimizer,
            checkpointing: self.checkpointing,
            lora: self.lora_rank.map(|rank| Lora {
                rank,
                targets: self.lora_targets.clone(),
            }),
            quant,
            zero: self.zero,
            gpus: self.gpus,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct GpusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// A model directory, its config.json, or a Hugging Face model id.
    #[arg(long)]
    pub model: PathBuf,
    /// Hub revision when --model is a model id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Only this GPU (an id from `vramprobe gpus`, or part of its name).
    #[arg(long)]
    pub gpu: Option<String>,
    /// Element type [default: the config's torch_dtype, else bf16].
    #[arg(long)]
    pub dtype: Option<DType>,
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Prompt length [default: 4096, or the model's limit if smaller].
    #[arg(long)]
    pub context: Option<u64>,
    #[arg(long, default_value_t = 8)]
    pub decode_steps: u64,
    /// A calibration.json from `bench --device cuda` (see `estimate --calibration`).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Engine: candle-eager, flash, hf-eager.
    #[arg(long, default_value = "candle-eager")]
    pub engine: EngineProfile,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Weight quantization of the linear layers: none, int8, int4 (groups of 128).
    #[arg(long, default_value = "none")]
    pub quant: crate::estimate::Quant,
    /// KV cache element type [default: the model dtype]: f32, f16, bf16, fp8.
    #[arg(long)]
    pub kv_dtype: Option<crate::estimate::KvDtype>,
    #[arg(long)]
    pub json: bool,
}

/// What is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Inference,
    Train,
}

/// Where the modelled engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Debug, clap::Args)]
pub struct EstimateArgs {
    /// A model directory holding config.json, the config.json itself, or a Hugging Face
    /// model id (`owner/name`: its config.json is fetched; HF_TOKEN for gated models).
    #[arg(long)]
    pub model: PathBuf,
    /// Hub revision (branch, tag or commit) when --model is a model id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Element type of weights and activations [default: the config's torch_dtype, else bf16].
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Prompt length in tokens [default: the model's max_position_embeddings minus the decode steps].
    #[arg(long)]
    pub context: Option<u64>,
    /// Tokens generated after the prompt.
    #[arg(long, default_value_t = 8)]
    pub decode_steps: u64,
    /// Where the engine runs: candle's CPU matmul widens bf16 to f32, CUDA does not.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cuda)]
    pub device: DeviceArg,
    /// Override max_position_embeddings (as `bench --max-position`; the rope tables grow).
    #[arg(long)]
    pub max_position: Option<u64>,
    /// A calibration.json written by `bench --device cuda`: its measured CUDA context and
    /// library sizes replace the defaults (an H100 with driver 580).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Engine whose allocations are modelled: candle-eager (what `bench` runs), flash (fused
    /// attention, preallocated KV cache), hf-eager (transformers' eager attention).
    #[arg(long, default_value = "candle-eager")]
    pub engine: EngineProfile,
    /// Weight quantization of the linear layers: none, int8, int4 (groups of 128).
    #[arg(long, default_value = "none")]
    pub quant: crate::estimate::Quant,
    /// KV cache element type [default: the model dtype]: f32, f16, bf16, fp8.
    #[arg(long)]
    pub kv_dtype: Option<crate::estimate::KvDtype>,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Add the fit over the GPU catalogue (as `vramprobe fit`).
    #[arg(long)]
    pub fit: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A model directory holding config.json, the config.json itself, or a Hugging Face
    /// model id (`owner/name`) [default: the built-in tiny Llama, models/vramprobe-tiny-llama].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Hub revision (branch, tag or commit) when --model is a model id.
    #[arg(long)]
    pub revision: Option<String>,
    /// No progress bars (download and sweep); they are also off when stderr is not a
    /// terminal.
    #[arg(long)]
    pub quiet: bool,
    /// Element type to load and run the model in.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Batch sizes, comma-separated [default: 1,2,4; with --mode train: 1,2].
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<u64>,
    /// Context lengths (prompt tokens), comma-separated [default: 128,256,512,1024; with
    /// --mode train: 128,256,512].
    #[arg(long, value_delimiter = ',')]
    pub context: Vec<u64>,
    /// `inference` (prefill, then decode steps) or `train`: two training steps per point
    /// (forward, loss over every position, backward, candle-nn's AdamW step), the peak of
    /// each phase measured.
    #[arg(long, value_enum, default_value_t = ModeArg::Inference)]
    pub mode: ModeArg,
    /// With --mode train: train LoRA adapters of this rank on a frozen model instead of
    /// every parameter.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_rank: Option<u64>,
    /// With --lora-rank: the projections that get adapters (q, k, v, o, gate, up, down).
    #[arg(long, value_delimiter = ',', default_value = "q,v")]
    pub lora_targets: Vec<crate::estimate::train::Target>,
    /// Decode steps measured after each prefill.
    #[arg(long, default_value_t = 8)]
    pub decode_steps: u64,
    /// `synthetic` (seeded random values of the right shapes), `download` (the model id's
    /// safetensors from the Hub, cached under HF_HOME), or a directory of *.safetensors
    /// files [default: `download` for a model id, else `synthetic`].
    #[arg(long)]
    pub weights: Option<String>,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run directory [default: runs/<UTC timestamp>-<model>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the points as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where to measure: the CPU backend, or CUDA device 0 (a binary built with
    /// `--features cuda`, see scripts/build-cuda.sh).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// NVML sampling rate in Hz (CUDA only; NVML calls take a driver lock: keep it low).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub nvml_hz: u32,
    /// After the grid, bisect per batch the largest context that fits (CUDA only).
    #[arg(long)]
    pub find_boundary: bool,
    /// Resolution of --find-boundary, in tokens.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub boundary_step: u64,
    /// Measure as if the GPU had this much memory for this process (CUDA only): e.g.
    /// `40GiB`, `24GB`, or bytes. The rest is taken by a ballast allocation.
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// Override max_position_embeddings (candle's llama builds rope tables for that many
    /// positions; contexts beyond it cannot run).
    #[arg(long)]
    pub max_position: Option<u64>,
    /// Continue the run in this directory: the same model, grid and settings (read from its
    /// run.json), measuring only the points it lacks.
    #[arg(long, conflicts_with_all = ["model", "out", "batch", "context", "weights", "dtype", "device"])]
    pub resume: Option<PathBuf>,
    /// Fail (exit 1) if any point's |error| exceeds this ratio (0.02 = 2%), for the total
    /// peak or for the part above the weights.
    #[arg(long, value_parser = parse_ratio)]
    pub max_error: Option<f64>,
}

/// A size in bytes: a plain number, or with a unit `KiB|MiB|GiB|TiB` (powers of 1024) or
/// `KB|MB|GB|TB` (powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "\"{s}\": unknown unit (use GiB, GB, MiB, MB or bytes)"
            ))
        }
    };
    match num.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * mult < 1e16 => Ok((n * mult).round() as u64),
        _ => Err(format!("\"{s}\" is not a positive size such as 40GiB")),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("\"{s}\" is not a ratio >= 0 (0.02 means 2%)")),
    }
}

/// Exit code for bad input (a config, a flag, an existing run directory).
pub const EXIT_BAD_INPUT: u8 = 2;

/// Exit code after SIGINT/SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// A combination of flags that cannot work, found before anything runs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Parse the command line, run it, report the error once.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs its life (listening, sweeps, NVML lost and back) at info.
    let default_filter = if matches!(cli.command, Command::Serve(_)) {
        "warn,vramprobe=info,hf_hub=off"
    } else {
        // hf-hub logs its retries at ERROR; the one error that matters is ours.
        "warn,hf_hub=off"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VRAMPROBE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<BenchError>(),
                    Some(BenchError::Interrupted { .. })
                )
            }) {
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            if is_bad_input(&e) {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<SpecError>()
            || c.is::<BadInput>()
            || c.is::<cuda_est::CalibrationError>()
            || matches!(
                c.downcast_ref::<crate::hub::HubError>(),
                Some(crate::hub::HubError::Gated { .. })
                    | Some(crate::hub::HubError::NotFound { .. })
                    | Some(crate::hub::HubError::Offline { .. })
            )
            || c.is::<crate::plan::PlanError>()
            || matches!(
                c.downcast_ref::<BenchError>(),
                Some(BenchError::Plan(_))
                    | Some(BenchError::Options(_))
                    | Some(BenchError::Run(crate::runner::RunError::Device(_)))
                    | Some(BenchError::Store(store::StoreError::Exists { .. }))
                    | Some(BenchError::Run(crate::runner::RunError::Unsupported { .. }))
                    | Some(BenchError::Run(crate::runner::RunError::BadTensor { .. }))
                    | Some(BenchError::Run(crate::runner::RunError::NoWeights { .. }))
            )
    })
}

/// Run a parsed command.
///
/// # Errors
/// Whatever the command reports, with context.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Estimate(a) => run_estimate(a),
        Command::Bench(a) => run_bench(a),
        Command::Gpus(a) => run_gpus(a),
        Command::Fit(a) => run_fit(a),
        Command::Report(a) => run_report(a),
        Command::Serve(a) => run_serve(a),
    }
}

/// Where a `--model` points.
enum ModelRef {
    Builtin,
    Local(PathBuf),
    Hub(String),
}

/// A path that exists, or whose first component is a local directory (`models/x`), is
/// local; otherwise an `owner/name` is a Hub model id.
fn model_ref(model: Option<&Path>) -> ModelRef {
    match model {
        None => ModelRef::Builtin,
        Some(p) if p.exists() => ModelRef::Local(p.to_path_buf()),
        Some(p) => match p.to_str() {
            Some(s)
                if crate::hub::is_repo_id(s)
                    && !s.split('/').next().is_some_and(|d| Path::new(d).is_dir()) =>
            {
                ModelRef::Hub(s.to_string())
            }
            _ => ModelRef::Local(p.to_path_buf()),
        },
    }
}

/// The spec of `--model`, and for a Hub model the snapshot directory it was fetched into
/// (with the weights when `weights` is set).
fn load_model(
    model: Option<&Path>,
    revision: Option<&str>,
    weights: bool,
    quiet: bool,
) -> anyhow::Result<(ModelSpec, Option<PathBuf>)> {
    match model_ref(model) {
        ModelRef::Builtin => Ok((
            ModelSpec::from_json_str(crate::TINY_CONFIG, Path::new(crate::TINY_CONFIG_PATH))?,
            None,
        )),
        ModelRef::Local(p) => Ok((ModelSpec::from_path(&p)?, None)),
        ModelRef::Hub(repo) => {
            let dir = crate::hub::fetch(&repo, revision, weights, quiet)?;
            let mut spec = ModelSpec::from_path(&dir)?;
            spec.hub_repo = Some(repo);
            Ok((spec, Some(dir)))
        }
    }
}

/// The CUDA overheads: from a calibration file, else the measured H100 defaults.
fn load_overheads(calibration: Option<&Path>) -> anyhow::Result<(CudaOverheads, String)> {
    match calibration {
        None => Ok((
            CudaOverheads::default(),
            "default: NVIDIA H100 80GB HBM3, driver 580.159.04, measured 2026-11-26".to_string(),
        )),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| BadInput(format!("{}: {e}", p.display())))?;
            let shown = p.display().to_string();
            Ok((CudaOverheads::from_calibration_json(&text, &shown)?, shown))
        }
    }
}

fn run_gpus(a: GpusArgs) -> anyhow::Result<()> {
    let cat = crate::estimate::gpus::CATALOGUE;
    if a.json {
        let v: Vec<serde_json::Value> = cat
            .iter()
            .map(|g| {
                json!({
                    "id": g.id, "name": g.name, "marketing_gb": g.marketing_gb,
                    "memory_bytes": g.memory_bytes, "usable_bytes": g.usable_bytes(),
                    "compute_capability": format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                    "bf16": g.bf16(), "source": g.source,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", report::gpus_table(cat));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fit_results(
    spec: &ModelSpec,
    dtype: DType,
    engine: EngineProfile,
    quant: crate::estimate::Quant,
    kv_dtype: Option<crate::estimate::KvDtype>,
    w: Workload,
    overheads: CudaOverheads,
    only: Option<&str>,
) -> anyhow::Result<Vec<crate::estimate::fit::GpuFit>> {
    use crate::estimate::fit;
    let q = fit::FitQuery {
        spec,
        dtype,
        engine,
        workload: w,
        overheads,
        quant,
        kv_dtype,
    };
    Ok(select_gpus(only)?
        .into_iter()
        .map(|g| fit::fit(&q, g))
        .collect())
}

/// The catalogue, or the one GPU `--gpu` names.
fn select_gpus(
    only: Option<&str>,
) -> anyhow::Result<Vec<&'static crate::estimate::gpus::GpuModel>> {
    use crate::estimate::gpus;
    Ok(match only {
        None => gpus::CATALOGUE.iter().collect(),
        Some(name) => vec![gpus::find(name).ok_or_else(|| {
            let ids: Vec<&str> = gpus::CATALOGUE.iter().map(|g| g.id).collect();
            BadInput(format!(
                "--gpu {name}: not one GPU of the catalogue (ids: {})",
                ids.join(", ")
            ))
        })?],
    })
}

/// Print a fit: `v` (the JSON without the fit) gets `fit` added, or the table.
fn print_fit(
    json_out: bool,
    mut v: serde_json::Value,
    spec: &ModelSpec,
    dtype: DType,
    engine: EngineProfile,
    w: Workload,
    fits: &[crate::estimate::fit::GpuFit],
) -> anyhow::Result<()> {
    if json_out {
        v["fit"] = json!(fits);
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!(
            "{}",
            report::fit_table(&spec.name(), dtype, engine, w, fits)
        );
    }
    Ok(())
}

fn run_fit_train(
    a: &FitArgs,
    spec: &ModelSpec,
    dtype: DType,
    w: Workload,
    overheads: CudaOverheads,
    source: &str,
) -> anyhow::Result<()> {
    use crate::estimate::fit;
    let q = fit::TrainFitQuery {
        spec,
        dtype,
        engine: a.engine,
        batch: w.batch,
        context: w.context,
        setup: a.train.setup(a.quant)?,
        overheads,
    };
    let fits: Vec<fit::GpuFit> = select_gpus(a.gpu.as_deref())?
        .into_iter()
        .map(|g| fit::fit_train(&q, g))
        .collect();
    let v = json!({
        "model": spec.name(), "dtype": dtype, "engine": a.engine.as_str(), "mode": "train",
        "setup": q.setup, "batch": w.batch, "context": w.context,
        "overheads": overheads, "overheads_source": source,
    });
    print_fit(a.json, v, spec, dtype, a.engine, w, &fits)
}

fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    use crate::serve::{self, job::BenchRequest, Secret, ServeError, ServeOptions};
    let opts = ServeOptions {
        listen: a.listen,
        token: a.token.map(Secret),
        runs_dir: a.runs_dir,
        poll_interval: a.poll_interval,
        per_process: a.per_process,
        fake_nvml: a.fake_nvml,
        bench_on_start: a.bench_on_start,
        bench_every: a.bench_every,
        bench_defaults: BenchRequest {
            model: a.bench_model,
            dtype: a.bench_dtype,
            device: a.bench_device,
            batch: a.bench_batch,
            context: a.bench_context,
            decode_steps: a.bench_decode_steps,
            mode: a.bench_mode,
            lora_rank: None,
            lora_targets: None,
        },
        header_timeout: a.header_timeout,
        request_timeout: a.request_timeout,
        shutdown_grace: a.shutdown_grace,
    };
    serve::run(opts, |addr| {
        outln!("vramprobe serve: listening on http://{addr}");
    })
    .map_err(|e| match e {
        ServeError::Options(m) => anyhow::Error::new(BadInput(m)),
        other => anyhow::Error::new(other),
    })
}

/// A stored run's report, or a clear error when `dir` is not a run directory.
fn stored_report(dir: &Path) -> anyhow::Result<report::run_report::Report> {
    if !dir.join("run.json").is_file() {
        return Err(BadInput(format!(
            "{}: no run.json there: not a vramprobe run directory",
            dir.display()
        ))
        .into());
    }
    Ok(report::run_report::build(dir)?)
}

fn run_report(a: ReportArgs) -> anyhow::Result<()> {
    if let Some([ra, rb]) = a.compare.as_deref() {
        let c = report::compare::compare(
            &ra.display().to_string(),
            &stored_report(ra)?,
            &rb.display().to_string(),
            &stored_report(rb)?,
        );
        match a.format {
            ReportFormat::Md => out!("{}", report::compare::markdown(&c)),
            ReportFormat::Json => outln!("{}", serde_json::to_string_pretty(&c)?),
            ReportFormat::Html => {
                return Err(BadInput("--compare renders md or json, not html".to_string()).into())
            }
        }
        return Ok(());
    }
    let Some(dir) = a.run_dir.as_deref() else {
        return Err(BadInput("report: give a RUN_DIR or --compare RUN_A RUN_B".into()).into());
    };
    let r = stored_report(dir)?;
    match a.format {
        ReportFormat::Md => out!("{}", report::run_report::markdown(&r)),
        ReportFormat::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
        ReportFormat::Html => {
            let plots = report::plots::plots(&r)?;
            out!("{}", report::html::html(&r, &plots));
        }
    }
    Ok(())
}

fn run_fit(a: FitArgs) -> anyhow::Result<()> {
    let (spec, _) = load_model(Some(&a.model), a.revision.as_deref(), false, true)?;
    let dtype = a.dtype.or(spec.torch_dtype).unwrap_or(DType::BF16);
    let limit = spec
        .max_position_embeddings
        .saturating_sub(a.decode_steps)
        .max(2);
    let context = a.context.unwrap_or(4096.min(limit));
    let w: Workload = Grid {
        batches: vec![a.batch],
        contexts: vec![context],
        decode_steps: a.decode_steps,
    }
    .workloads(&spec)?[0];
    let (overheads, source) = load_overheads(a.calibration.as_deref())?;
    if a.train.mode == ModeArg::Train {
        return run_fit_train(&a, &spec, dtype, w, overheads, &source);
    }
    let fits = fit_results(
        &spec,
        dtype,
        a.engine,
        a.quant,
        a.kv_dtype,
        w,
        overheads,
        a.gpu.as_deref(),
    )?;
    let v = json!({
        "model": spec.name(), "dtype": dtype, "engine": a.engine.as_str(), "mode": "inference",
        "batch": w.batch, "context": w.context, "decode_steps": w.decode_steps,
        "overheads": overheads, "overheads_source": source,
    });
    print_fit(a.json, v, &spec, dtype, a.engine, w, &fits)
}

fn run_estimate_train(
    a: &EstimateArgs,
    spec: &ModelSpec,
    dtype: DType,
    w: Workload,
) -> anyhow::Result<()> {
    use crate::estimate::train::estimate_train;
    let setup = a.train.setup(a.quant)?;
    let t = estimate_train(spec, dtype, a.engine, w.batch, w.context, &setup);
    let rule = crate::estimate::rule_of_thumb(spec.param_count());
    // candle-eager: the step `bench --mode train` runs (candle-nn's AdamW, moments in the
    // model dtype, no checkpointing), simulated phase by phase.
    let candle = (a.engine == EngineProfile::CandleEager).then(|| {
        use crate::estimate::candle_train::{estimate, LoraSetup, TrainPhase};
        let lora = setup.lora.as_ref().map(|l| LoraSetup {
            rank: l.rank,
            targets: l.targets.clone(),
        });
        let p = estimate(
            spec,
            dtype,
            a.device == DeviceArg::Cpu,
            w.batch,
            w.context,
            lora.as_ref(),
        );
        let phases: Vec<(&'static str, u64, std::collections::BTreeMap<String, u64>)> =
            TrainPhase::ALL
                .iter()
                .map(|ph| (ph.as_str(), p.phase(*ph).total(), p.phase(*ph).to_map()))
                .collect();
        (p.total_bytes(), phases)
    });
    if a.json {
        let v = json!({
            "model": spec.name(), "config": spec.source, "mode": "train", "dtype": dtype,
            "engine": a.engine.as_str(), "batch": w.batch, "context": w.context,
            "params": spec.param_count(), "setup": setup, "train": t,
            "weights_bytes": t.weights_bytes,
            "kv_cache_bytes_per_token": crate::estimate::kv_cache_bytes_per_token(spec, dtype),
            "components": {
                "weights": t.weights_bytes, "gradients": t.gradients_bytes,
                "optimizer_states": t.optimizer_states_bytes, "activations": t.activations_bytes,
                "logits": t.logits_bytes,
            },
            "total_bytes": t.total_bytes(), "weights_only_bytes": spec.param_count() * dtype.size_in_bytes(),
            "rule_of_thumb": rule,
            "candle_eager_step": candle.as_ref().map(|(total, phases)| json!({
                "total_bytes": total,
                "phases": phases.iter().map(|(n, b, parts)| json!({
                    "phase": n, "bytes": b, "components": parts,
                })).collect::<Vec<_>>(),
            })),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!(
            "{}",
            report::train_table(&spec.name(), dtype, w, &setup, &t, &rule)
        );
        if let Some((total, phases)) = &candle {
            outln!(
                "\ncandle-eager training step (what `bench --mode train` runs and measures: \
                 candle-nn AdamW with moments in {dtype}, no checkpointing; the optimizer, \
                 checkpointing, ZeRO and quantization flags above do not apply to it):"
            );
            for (name, bytes, parts) in phases {
                let list: Vec<String> = parts
                    .iter()
                    .map(|(k, v)| format!("{k} {}", report::bytes(*v)))
                    .collect();
                outln!(
                    "  {name:<22} {:>12}  ({})",
                    report::bytes(*bytes),
                    list.join(", ")
                );
            }
            outln!("  {:<22} {:>12}", "peak", report::bytes(*total));
        }
    }
    Ok(())
}

fn run_estimate(a: EstimateArgs) -> anyhow::Result<()> {
    let (mut spec, _) = load_model(Some(&a.model), a.revision.as_deref(), false, true)?;
    if let Some(m) = a.max_position {
        spec = spec.with_max_position(m)?;
    }
    let dtype = a.dtype.or(spec.torch_dtype).unwrap_or(DType::BF16);
    let context = a.context.unwrap_or_else(|| {
        spec.max_position_embeddings
            .saturating_sub(a.decode_steps)
            .max(2)
    });
    let grid = Grid {
        batches: vec![a.batch],
        contexts: vec![context],
        decode_steps: a.decode_steps,
    };
    let w: Workload = grid.workloads(&spec)?[0];
    if a.train.mode == ModeArg::Train {
        return run_estimate_train(&a, &spec, dtype, w);
    }
    let backend = match a.device {
        DeviceArg::Cpu => Backend::Cpu,
        DeviceArg::Cuda => Backend::Cuda,
    };
    let e = estimate::estimate_quantized(&spec, dtype, a.engine, backend, w, a.quant, a.kv_dtype);
    let (overheads, overheads_source) = load_overheads(a.calibration.as_deref())?;
    let process = (backend == Backend::Cuda).then(|| {
        (
            cuda_est::process(&e, Phase::Prefill, 0, &overheads),
            cuda_est::process(&e, Phase::Decode, 0, &overheads),
        )
    });
    if a.json {
        let phase = |p: &estimate::PhaseEstimate| json!({"total_bytes": p.total_bytes(), "components": p.peak.to_map()});
        let v = json!({
            "model": spec.name(),
            "config": spec.source,
            "params": e.params,
            "dtype": dtype,
            "weights_bytes": e.weights_bytes,
            "kv_cache_bytes_per_token": e.kv_cache_bytes_per_token,
            "engine": e.engine.as_str(),
            "mode": "inference",
            "quant": a.quant,
            "kv_dtype": a.kv_dtype,
            "device": backend.as_str(),
            "batch": w.batch,
            "context": w.context,
            "decode_steps": w.decode_steps,
            "total_bytes": e.total_bytes(),
            "weights_only_bytes": e.weights_bytes,
            "rule_of_thumb": crate::estimate::rule_of_thumb(e.params),
            "peak_phase": e.peak_phase().phase.as_str(),
            "components": e.peak_phase().peak.to_map(),
            "phases": {"prefill": phase(&e.prefill), "decode": phase(&e.decode)},
        });
        let mut v = v;
        if a.fit {
            v["fit"] = json!(fit_results(
                &spec, dtype, a.engine, a.quant, a.kv_dtype, w, overheads, None
            )?);
        }
        if let Some((p, d)) = &process {
            v["process_total_bytes"] = json!(p.total_bytes().max(d.total_bytes()));
            v["process"] = json!({
                "prefill": {"total_bytes": p.total_bytes(), "terms": p},
                "decode": {"total_bytes": d.total_bytes(), "terms": d},
                "overheads": overheads,
                "overheads_source": overheads_source,
            });
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", report::estimate_table(&spec.name(), &e));
        if let Some((p, d)) = &process {
            out!("{}", report::process_table(p, d, &overheads_source));
            if a.engine != EngineProfile::CandleEager {
                outln!(
                    "(the process terms are candle's; PyTorch's caching allocator holds more: \
                     on the H100 at batch 1 x 8192, eager 48.3 GiB in NVML for 36.5 GiB allocated)"
                );
            }
        }
        out!(
            "{}",
            report::rule_of_thumb_lines(
                &e,
                process.map(|(p, d)| p.total_bytes().max(d.total_bytes()))
            )
        );
        if a.fit {
            let fits = fit_results(
                &spec, dtype, a.engine, a.quant, a.kv_dtype, w, overheads, None,
            )?;
            out!(
                "\n{}",
                report::fit_table(&spec.name(), dtype, a.engine, w, &fits)
            );
        }
    }
    Ok(())
}

/// The bench arguments a stored run was made with (`--resume DIR`).
fn resume_args(a: &BenchArgs, dir: &Path) -> anyhow::Result<BenchArgs> {
    for f in ["run.json", "points.jsonl"] {
        if !dir.join(f).is_file() {
            return Err(BadInput(format!(
                "--resume {}: no {f} there: not a vramprobe run directory",
                dir.display()
            ))
            .into());
        }
    }
    let info = store::RunDir::read_info(dir)?;
    let s = info.settings.ok_or_else(|| {
        BadInput(format!(
            "{}: run.json has no `settings` (written by an older vramprobe): it cannot be resumed",
            dir.join("run.json").display()
        ))
    })?;
    let dtype: DType = s.dtype.parse().map_err(|e: String| {
        BadInput(format!(
            "{}: settings.dtype: {e}",
            dir.join("run.json").display()
        ))
    })?;
    Ok(BenchArgs {
        model: s.model.map(PathBuf::from),
        revision: s.revision,
        quiet: a.quiet,
        dtype,
        batch: info.grid.batches,
        context: info.grid.contexts,
        decode_steps: info.grid.decode_steps,
        mode: if s.mode.as_deref() == Some("train") {
            ModeArg::Train
        } else {
            ModeArg::Inference
        },
        lora_rank: s.lora.as_ref().map(|l| l.rank),
        lora_targets: s.lora.as_ref().map_or_else(
            || {
                vec![
                    crate::estimate::train::Target::Q,
                    crate::estimate::train::Target::V,
                ]
            },
            |l| l.targets.clone(),
        ),
        weights: Some(s.weights),
        seed: s.seed,
        out: Some(dir.to_path_buf()),
        json: a.json,
        device: if s.device == "cuda" {
            DeviceArg::Cuda
        } else {
            DeviceArg::Cpu
        },
        nvml_hz: s.nvml_hz,
        find_boundary: s.find_boundary.is_some(),
        boundary_step: s.find_boundary.unwrap_or(128),
        memory_limit: s.memory_limit,
        max_position: s.max_position,
        max_error: a.max_error,
        resume: None,
    })
}

/// SIGINT and SIGTERM set the flag (the sweep stops after the current point); a second
/// one ends the process at once.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            EXIT_INTERRUPTED.into(),
            stop.clone(),
        )?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// The sweep's progress bar on stderr: points stored of the grid's, the last point's peak
/// and error. Hidden with `--quiet` or when stderr is not a terminal.
fn sweep_bar(quiet: bool, points: u64) -> indicatif::ProgressBar {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(points);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:20}] {pos}/{len} points, {elapsed} (eta {eta}) {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("bench");
    bar.set_message("loading the model and warming up");
    bar.tick();
    bar
}

fn run_bench(a: BenchArgs) -> anyhow::Result<()> {
    let (mut a, resume) = match &a.resume {
        Some(dir) => (resume_args(&a, dir)?, true),
        None => (a, false),
    };
    let train = a.mode == ModeArg::Train;
    if a.batch.is_empty() {
        a.batch = if train { vec![1, 2] } else { vec![1, 2, 4] };
    }
    if a.context.is_empty() {
        a.context = if train {
            vec![128, 256, 512]
        } else {
            vec![128, 256, 512, 1024]
        };
    }
    if a.lora_rank.is_some() && !train {
        return Err(BadInput("--lora-rank needs --mode train".into()).into());
    }
    let lora = a
        .lora_rank
        .map(|rank| crate::estimate::candle_train::LoraSetup {
            rank,
            targets: a.lora_targets.clone(),
        });
    let is_hub = matches!(model_ref(a.model.as_deref()), ModelRef::Hub(_));
    let weights_arg = a
        .weights
        .clone()
        .unwrap_or_else(|| if is_hub { "download" } else { "synthetic" }.into());
    if weights_arg == "download" && !is_hub {
        return Err(BadInput(
            "--weights download needs --model to be a Hugging Face model id (owner/name)".into(),
        )
        .into());
    }
    let (mut spec, snapshot) = load_model(
        a.model.as_deref(),
        a.revision.as_deref(),
        weights_arg == "download",
        a.quiet,
    )?;
    if let Some(m) = a.max_position {
        spec = spec.with_max_position(m)?;
    }
    let weights = match (weights_arg.as_str(), snapshot) {
        ("synthetic", _) => WeightsSource::Synthetic { seed: a.seed },
        ("download", Some(dir)) => WeightsSource::Local(dir),
        (other, _) => WeightsSource::Local(PathBuf::from(other)),
    };
    let settings = store::BenchSettings {
        model: a.model.as_ref().map(|p| p.display().to_string()),
        revision: a.revision.clone(),
        dtype: a.dtype.to_string(),
        weights: weights_arg.clone(),
        seed: a.seed,
        device: match a.device {
            DeviceArg::Cpu => "cpu".into(),
            DeviceArg::Cuda => "cuda".into(),
        },
        nvml_hz: a.nvml_hz,
        find_boundary: a.find_boundary.then_some(a.boundary_step),
        memory_limit: a.memory_limit,
        max_position: a.max_position,
        mode: train.then(|| "train".into()),
        lora: lora.clone(),
    };
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-{}",
            store::utc_stamp(std::time::SystemTime::now()),
            spec.name()
        ))
    });
    let opts = BenchOptions {
        spec,
        dtype: a.dtype,
        grid: Grid {
            batches: a.batch,
            contexts: a.context,
            decode_steps: a.decode_steps,
        },
        weights,
        out: out.clone(),
        command: std::env::args().collect(),
        device: match a.device {
            DeviceArg::Cpu => DeviceKind::Cpu,
            DeviceArg::Cuda => DeviceKind::Cuda(0),
        },
        nvml_hz: a.nvml_hz,
        find_boundary: a.find_boundary.then_some(a.boundary_step),
        memory_limit: a.memory_limit,
        settings: Some(settings),
        resume,
        stop: Some(stop_flag()?),
        train: train.then_some(bench::TrainOptions { lora }),
    };
    let per_point = if train { 4 } else { 2 };
    let bar = sweep_bar(
        a.quiet,
        opts.grid
            .workloads(&opts.spec)
            .map_or(0, |w| w.len() as u64 * per_point),
    );
    if resume {
        // What the run being resumed already stored.
        let stored = store::read_points(&out)
            .map_or(0, |p| p.iter().filter(|p| p.stage == "grid").count() as u64);
        bar.set_position(stored);
    }
    let points = bench::run(&opts, |p| {
        tracing::info!(batch = p.batch, context = p.context, phase = %p.phase, error = p.error_ratio, "point stored");
        // Drawn here, between points, from this thread: no ticker thread allocating while
        // the CPU allocator is being measured.
        if p.stage == "boundary" && bar.position() >= bar.length().unwrap_or(0) {
            bar.inc_length(1);
        }
        bar.set_message(if p.status == "ok" {
            format!(
                "batch {} x {} {}: {} ({:+.2}%)",
                p.batch,
                p.context,
                p.phase,
                report::bytes(p.measured_peak_bytes),
                p.error_ratio * 100.0
            )
        } else {
            format!(
                "batch {} x {} {}: {}",
                p.batch, p.context, p.phase, p.status
            )
        });
        bar.inc(1);
    });
    bar.finish_and_clear();
    let points = points.with_context(|| format!("bench into {}", out.display()))?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&points)?);
    } else {
        out!("{}", report::bench_table(&points));
        out!("{}", report::bench_summary(&points));
        outln!("run written to {}", out.display());
    }
    let r = report::run_report::write(&out)?;
    if !a.json {
        outln!("{}", r.headline);
    }
    if let Some(max) = a.max_error {
        let bad = bench::tolerance_violations(&points, max);
        if !bad.is_empty() {
            let list: Vec<String> = bad
                .iter()
                .map(|p| {
                    format!(
                        "batch {} context {} {}: error {:+.3}%, above the weights {:+.3}%",
                        p.batch,
                        p.context,
                        p.phase,
                        p.error_ratio * 100.0,
                        p.above_weights_error_ratio * 100.0
                    )
                })
                .collect();
            anyhow::bail!(
                "{} of {} points exceed --max-error {max}:\n  {}",
                bad.len(),
                points.len(),
                list.join("\n  ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("40GiB"), Ok(40 << 30));
        assert_eq!(parse_size("24GB"), Ok(24_000_000_000));
        assert_eq!(parse_size("1.5 MiB"), Ok(1_572_864));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "0", "-1GB", "12 parsecs", "GB", "1e30"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
