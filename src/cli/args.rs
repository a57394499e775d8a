//! The command line's arguments (clap derive: the doc comments are the help text). What
//! each command does is in its own file beside this one.

use super::BadInput;
use crate::estimate::candle_train::LoraSetup;
use crate::estimate::EngineProfile;
use crate::model::ModelRef;
use crate::plan::{self, BenchPlan, DeviceChoice, Grid, Mode, OverMemory, WeightsChoice};
use crate::spec::DType;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
    /// The host's /proc (mounted into the daemon's container, or hostPID): GPU processes
    /// are attributed to containers and pods through <proc-root>/<pid>/cgroup.
    #[arg(long, env = "VRAMPROBE_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Do not attribute GPU memory to containers and pods.
    #[arg(long, env = "VRAMPROBE_NO_CONTAINERS")]
    pub no_containers: bool,
    /// The most container series exported (the largest kept; the rest counted in
    /// vramprobe_gpu_container_series_dropped_total).
    #[arg(long, env = "VRAMPROBE_MAX_CONTAINERS", default_value_t = crate::serve::pods::DEFAULT_MAX_CONTAINERS)]
    pub max_containers: usize,
    /// A serving engine's Prometheus endpoint on this node (vLLM, SGLang), scraped at the
    /// poll interval; repeatable (e.g. http://127.0.0.1:8000/metrics).
    #[arg(long, env = "VRAMPROBE_ENGINE_METRICS", value_delimiter = ',')]
    pub engine_metrics: Vec<crate::serve::engines::Endpoint>,
    /// NAME=CONFIG: the model an engine reports as NAME (its model_name label) is the one
    /// of CONFIG (a model directory or config.json): its predicted KV cache and weights are
    /// exported beside the engine's figures; repeatable.
    #[arg(long, env = "VRAMPROBE_ENGINE_MODEL", value_parser = parse_engine_model)]
    pub engine_model: Vec<(String, PathBuf)>,
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
    /// Sweeps' engine, candle-eager, candle-chunked or candle-quantized [default: bench's,
    /// candle-eager].
    #[arg(long, env = "VRAMPROBE_BENCH_ENGINE")]
    pub bench_engine: Option<String>,
    /// Sweeps' GGML type with --bench-engine candle-quantized: q4_0, q4k, q8_0 [default: q4k].
    #[arg(long, env = "VRAMPROBE_BENCH_QUANT")]
    pub bench_quant: Option<String>,
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

fn parse_engine_model(s: &str) -> Result<(String, PathBuf), String> {
    match s.rsplit_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "\"{s}\": NAME=CONFIG (e.g. meta-llama/Meta-Llama-3-8B-Instruct=models/meta-llama-3-8b-instruct)"
        )),
    }
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
    /// Each decode phase step by step: what every source read at each step's end and
    /// after the device settled, and on CUDA what the pool took, handed back and held
    /// beyond the tensors (md or json).
    #[arg(long, conflicts_with = "compare")]
    pub decode_steps: bool,
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
    #[arg(long, default_value_t = Mode::Inference)]
    pub mode: Mode,
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
    pub(super) fn setup(
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

/// What `estimate` and `fit` both ask about: the model, how it runs, the workload.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// A model directory holding config.json, the config.json itself, or a Hugging Face
    /// model id (`owner/name`: its config.json is fetched; HF_TOKEN for gated models).
    #[arg(long)]
    pub model: String,
    /// Hub revision (branch, tag or commit) when --model is a model id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Element type of weights and activations [default: the config's torch_dtype, else bf16].
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Tokens generated after the prompt.
    #[arg(long, default_value_t = plan::DEFAULT_DECODE_STEPS)]
    pub decode_steps: u64,
    /// A calibration.json written by `bench --device cuda`: its measured CUDA context and
    /// library sizes replace the defaults (an H100 with driver 580).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Engine whose allocations are modelled: candle-eager, candle-chunked and
    /// candle-quantized (what `bench` runs; the last with GGUF weights, --quant), transformers-eager (transformers' eager attention; alias hf-eager),
    /// transformers-sdpa (transformers with SDPA: fused attention, preallocated KV cache;
    /// alias flash), vllm (vLLM 0.11.0's memory plan: KV cache blocks, tokens and
    /// concurrency on one GPU; needs --gpu for `estimate`).
    #[arg(long, default_value = "candle-eager")]
    pub engine: EngineArg,
    #[command(flatten)]
    pub chunked: ChunkedArgs,
    #[command(flatten)]
    pub vllm: VllmArgs,
    /// Weight quantization: none, int8, int4 (groups of 128) of the linear layers; or the
    /// GGML types q4_0, q4k, q8_0 (candle-quantized: every 2-D weight, q4k unless told).
    #[arg(long, default_value = "none")]
    pub quant: crate::estimate::Quant,
    /// candle-quantized: a GGUF file whose weights' types (read from its header, checked
    /// against config.json) replace --quant, as `bench --weights FILE.gguf` measures it.
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// KV cache element type [default: the model dtype]: f32, f16, bf16, fp8.
    #[arg(long)]
    pub kv_dtype: Option<crate::estimate::KvDtype>,
    #[command(flatten)]
    pub train: TrainArgs,
}

impl QueryArgs {
    /// The fit query for `spec` in `dtype` at `workload`.
    pub fn fit_query<'a>(
        &self,
        spec: &'a crate::spec::ModelSpec,
        dtype: DType,
        engine: EngineProfile,
        workload: crate::estimate::Workload,
        overheads: crate::estimate::cuda::CudaOverheads,
        layout: Option<&'a crate::estimate::candle_quantized::QuantLayout>,
    ) -> crate::estimate::fit::FitQuery<'a> {
        crate::estimate::fit::FitQuery {
            spec,
            dtype,
            engine,
            workload,
            overheads,
            quant: self.quant_for(engine).unwrap_or(self.quant),
            kv_dtype: self.kv_dtype,
            knobs: self.chunked.knobs(),
            layout,
        }
    }

    /// `--gguf`: the file's GGML type of every weight, for candle-quantized.
    ///
    /// # Errors
    /// [`BadInput`] for `--gguf` with another engine or beside `--quant`, and for a file
    /// that is not a llama GGUF matching the config (naming the file and the tensor).
    pub fn gguf_layout(
        &self,
        spec: &crate::spec::ModelSpec,
        engine: EngineProfile,
    ) -> Result<Option<crate::estimate::candle_quantized::QuantLayout>, BadInput> {
        let Some(path) = &self.gguf else {
            return Ok(None);
        };
        if engine != EngineProfile::CandleQuantized {
            return Err(BadInput(format!(
                "--gguf is for --engine candle-quantized (not {})",
                engine.as_str()
            )));
        }
        if self.quant != crate::estimate::Quant::None {
            return Err(BadInput(
                "--gguf and --quant: a GGUF file's weights have the types it holds".into(),
            ));
        }
        crate::runner::quantized::gguf_layout(spec, path)
            .map(Some)
            .map_err(|e| BadInput(e.to_string()))
    }

    /// The quantization `engine` runs with: for candle-quantized a GGML type (q4k unless
    /// told), and no other KV cache type than its own f32.
    ///
    /// # Errors
    /// [`BadInput`] for int8/int4 or --kv-dtype with candle-quantized.
    pub fn quant_for(&self, engine: EngineProfile) -> Result<crate::estimate::Quant, BadInput> {
        use crate::estimate::Quant;
        if engine != EngineProfile::CandleQuantized {
            return Ok(self.quant);
        }
        if self.kv_dtype.is_some() {
            return Err(BadInput(
                "--kv-dtype does not apply to candle-quantized: candle-transformers' \
                 quantized_llama keeps its KV cache in f32"
                    .into(),
            ));
        }
        match self.quant {
            Quant::None => Ok(Quant::Q4K),
            q if q.ggml().is_some() => Ok(q),
            q => Err(BadInput(format!(
                "--quant {}: candle-quantized runs GGML types: --quant q4_0, q4k or q8_0",
                serde_json::to_value(q)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ))),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct FitArgs {
    #[command(flatten)]
    pub q: QueryArgs,
    /// Only this GPU (an id from `vramprobe gpus`, or part of its name).
    #[arg(long)]
    pub gpu: Option<String>,
    /// --engine vllm: requests served at once, each of --max-model-len tokens (or the
    /// model's limit): per GPU, whether they fit, and the fewest GPUs that hold them.
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// Prompt length [default: 4096, or the model's limit if smaller].
    #[arg(long)]
    pub context: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub q: QueryArgs,
    /// Prompt length in tokens [default: the model's max_position_embeddings minus the decode steps].
    #[arg(long)]
    pub context: Option<u64>,
    /// Where the engine runs: candle's CPU matmul widens bf16 to f32, CUDA does not.
    #[arg(long, default_value_t = DeviceChoice::Cuda)]
    pub device: DeviceChoice,
    /// Override max_position_embeddings (as `bench --max-position`; the rope tables grow).
    #[arg(long)]
    pub max_position: Option<u64>,
    /// Add the fit over the GPU catalogue (as `vramprobe fit`).
    #[arg(long)]
    pub fit: bool,
    /// The GPU (an id from `vramprobe gpus`, or part of its name): the plan's card with
    /// --engine vllm; with --fit, the only GPU fitted.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A model directory holding config.json, the config.json itself, or a Hugging Face
    /// model id (`owner/name`) [default: the built-in tiny Llama, models/vramprobe-tiny-llama].
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit) when --model is a model id.
    #[arg(long)]
    pub revision: Option<String>,
    /// No progress bars (download and sweep); they are also off when stderr is not a
    /// terminal.
    #[arg(long)]
    pub quiet: bool,
    /// Element type to load and run the model in.
    #[arg(long, default_value_t = plan::DEFAULT_DTYPE)]
    pub dtype: DType,
    /// Batch sizes, comma-separated [default: 1,2,4; with --mode train: 1,2; with
    /// --engine candle-quantized: 1].
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<u64>,
    /// Context lengths (prompt tokens), comma-separated [default: 128,256,512,1024; with
    /// --mode train: 128,256,512]. A context at the model's max_position_embeddings is the
    /// sequence the cache holds: the prompt makes room for the decode steps.
    #[arg(long, value_delimiter = ',')]
    pub context: Vec<u64>,
    /// `inference` (prefill, then decode steps) or `train`: two training steps per point
    /// (forward, loss over every position, backward, candle-nn's AdamW step), the peak of
    /// each phase measured.
    #[arg(long, default_value_t = Mode::Inference)]
    pub mode: Mode,
    /// With --mode train: train LoRA adapters of this rank on a frozen model instead of
    /// every parameter.
    #[arg(long)]
    pub lora_rank: Option<u64>,
    /// With --lora-rank: the projections that get adapters (q, k, v, o, gate, up, down).
    #[arg(long, value_delimiter = ',', default_value = "q,v")]
    pub lora_targets: Vec<crate::estimate::train::Target>,
    /// Decode steps measured after each prefill.
    #[arg(long, default_value_t = plan::DEFAULT_DECODE_STEPS)]
    pub decode_steps: u64,
    /// `synthetic` (seeded random values of the right shapes), `download` (the model id's
    /// safetensors from the Hub, cached under HF_HOME), or a directory of *.safetensors
    /// files (with --engine candle-quantized: a GGUF file) [default: `download` for a
    /// model id, else `synthetic`].
    #[arg(long)]
    pub weights: Option<WeightsChoice>,
    /// candle-quantized: the GGML type every synthetic 2-D weight is quantized to, with
    /// candle's own quantizer: q4_0, q4k, q8_0 [default: q4k].
    #[arg(long)]
    pub quant: Option<crate::estimate::candle_quantized::GgmlType>,
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
    #[arg(long, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// NVML sampling rate in Hz, 1 to 100 (CUDA only; NVML calls take a driver lock: keep it
    /// low).
    #[arg(long, default_value_t = plan::DEFAULT_NVML_HZ)]
    pub nvml_hz: u32,
    /// After the grid, bisect per batch the largest context that fits (CUDA only).
    #[arg(long)]
    pub find_boundary: bool,
    /// Resolution of --find-boundary, in tokens.
    #[arg(long, default_value_t = plan::DEFAULT_BOUNDARY_STEP)]
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
    #[arg(long, conflicts_with_all = ["model", "out", "batch", "context", "weights", "dtype", "device", "engine", "prefill_chunk", "kv_capacity", "attention_block"])]
    pub resume: Option<PathBuf>,
    /// Fail (exit 1) if any point's |error| exceeds this ratio (0.02 = 2%), for the total
    /// peak or for the part above the weights.
    #[arg(long, value_parser = parse_ratio)]
    pub max_error: Option<f64>,
    /// Points whose estimate (plus 10% and 256 MiB) exceeds the memory the device can give
    /// (on the CPU: MemAvailable, the cgroup's limit, `ulimit -v`; on a GPU: --memory-limit,
    /// else the free memory NVML reports, with the CUDA process terms): `refuse` the sweep
    /// before anything runs (exit 2), `skip` them (recorded as `oom`, predicted and not run),
    /// or `run` them (GPU only: an out-of-memory point is a result there)
    /// [default: refuse on the CPU, run on a GPU].
    #[arg(long)]
    pub over_memory: Option<OverMemory>,
    /// Engine measured: candle-eager (candle-transformers' Llama) or candle-chunked
    /// (preallocated KV cache, chunked prefill, attention in bounded blocks).
    #[arg(long, default_value = "candle-eager")]
    pub engine: EngineProfile,
    #[command(flatten)]
    pub chunked: ChunkedArgs,
}

/// What `--engine` names for `estimate` and `fit`: an engine whose allocations are replayed,
/// or vLLM's memory plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineArg {
    Profile(EngineProfile),
    Vllm,
}

impl std::str::FromStr for EngineArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "vllm" {
            return Ok(EngineArg::Vllm);
        }
        s.parse::<EngineProfile>()
            .map(EngineArg::Profile)
            .map_err(|e| e.replace("transformers-sdpa;", "transformers-sdpa, vllm;"))
    }
}

/// vLLM's engine arguments (`--engine vllm` only), with vLLM's names and defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VllmArgs {
    /// vllm: fraction of the GPU's memory vLLM takes [default: 0.9].
    #[arg(long)]
    pub gpu_memory_utilization: Option<f64>,
    /// vllm: longest request in tokens [default: the config's max_position_embeddings].
    #[arg(long)]
    pub max_model_len: Option<u64>,
    /// vllm: tokens per scheduler step, the profile run's size [default: vLLM's for the
    /// GPU: 8192 on 70 GiB and larger cards but A100s, else 2048; offline 16384 / 8192].
    #[arg(long)]
    pub max_num_batched_tokens: Option<u64>,
    /// vllm: requests per step, the sampler warm-up's rows [default: 1024 on 70 GiB and
    /// larger cards but A100s, else 256].
    #[arg(long)]
    pub max_num_seqs: Option<u64>,
    /// vllm: tokens per KV cache block: 1, 8, 16, 32, 64, 128 [default: 16].
    #[arg(long)]
    pub block_size: Option<u64>,
    /// vllm: GPUs the model is split over (tensor parallel) [default: 1].
    #[arg(long)]
    pub tensor_parallel_size: Option<u64>,
    /// vllm: KV cache element type: auto (the model dtype), fp8 [default: auto].
    #[arg(long)]
    pub kv_cache_dtype: Option<crate::estimate::vllm::KvCacheDtype>,
    /// vllm: weight quantization: none, fp8 (per-tensor scales), w8a8 (per-channel
    /// scales), w4a16 (4-bit, groups of 128) [default: none].
    #[arg(long)]
    pub quantization: Option<crate::estimate::vllm::VllmQuant>,
    /// vllm: no torch.compile and no CUDA graphs.
    #[arg(long)]
    pub enforce_eager: bool,
    /// vllm: `server` (vllm serve) or `offline` (the LLM class): their batch defaults
    /// differ [default: server].
    #[arg(long)]
    pub usage: Option<crate::estimate::vllm::Usage>,
}

impl VllmArgs {
    /// The first vLLM flag given, for the error when the engine is not vllm.
    pub fn first_given(&self) -> Option<&'static str> {
        [
            (
                self.gpu_memory_utilization.is_some(),
                "--gpu-memory-utilization",
            ),
            (self.max_model_len.is_some(), "--max-model-len"),
            (
                self.max_num_batched_tokens.is_some(),
                "--max-num-batched-tokens",
            ),
            (self.max_num_seqs.is_some(), "--max-num-seqs"),
            (self.block_size.is_some(), "--block-size"),
            (
                self.tensor_parallel_size.is_some(),
                "--tensor-parallel-size",
            ),
            (self.kv_cache_dtype.is_some(), "--kv-cache-dtype"),
            (self.quantization.is_some(), "--quantization"),
            (self.enforce_eager, "--enforce-eager"),
            (self.usage.is_some(), "--usage"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }

    /// The knobs, vLLM's defaults where not given.
    pub fn knobs(&self) -> crate::estimate::vllm::VllmKnobs {
        let d = crate::estimate::vllm::VllmKnobs::default();
        crate::estimate::vllm::VllmKnobs {
            gpu_memory_utilization: self
                .gpu_memory_utilization
                .unwrap_or(d.gpu_memory_utilization),
            max_model_len: self.max_model_len,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            block_size: self.block_size.unwrap_or(d.block_size),
            tensor_parallel_size: self.tensor_parallel_size.unwrap_or(d.tensor_parallel_size),
            kv_cache_dtype: self.kv_cache_dtype.unwrap_or(d.kv_cache_dtype),
            quantization: self.quantization.unwrap_or(d.quantization),
            enforce_eager: self.enforce_eager,
            usage: self.usage.unwrap_or(d.usage),
        }
    }
}

impl QueryArgs {
    /// The engine whose allocations are replayed; a [`BadInput`] for vLLM flags given
    /// without `--engine vllm`. `None` for vllm.
    pub fn profile(&self) -> Result<Option<EngineProfile>, BadInput> {
        match self.engine {
            EngineArg::Vllm => Ok(None),
            EngineArg::Profile(e) => match self.vllm.first_given() {
                Some(flag) => Err(BadInput(format!(
                    "{flag} is one of vLLM's settings: it needs --engine vllm (not {})",
                    e.as_str()
                ))),
                None => Ok(Some(e)),
            },
        }
    }
}

/// The chunked engine's settings, shared by `bench`, `estimate` and `fit`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ChunkedArgs {
    /// candle-chunked: tokens per prefill forward over the whole batch (each sequence gets
    /// prefill-chunk / batch positions, at least 1) [default: 2048].
    #[arg(long)]
    pub prefill_chunk: Option<u64>,
    /// candle-chunked: KV cache positions per sequence [default: the context plus the
    /// decode steps].
    #[arg(long)]
    pub kv_capacity: Option<u64>,
    /// candle-chunked: most f32 elements of one attention score block [default: 67108864,
    /// 256 MiB].
    #[arg(long)]
    pub attention_block: Option<u64>,
}

impl ChunkedArgs {
    /// The settings, defaults where not given.
    pub fn knobs(&self) -> crate::estimate::candle_chunked::Knobs {
        let d = crate::estimate::candle_chunked::Knobs::default();
        crate::estimate::candle_chunked::Knobs {
            prefill_chunk: self.prefill_chunk.unwrap_or(d.prefill_chunk).max(1),
            kv_capacity: self.kv_capacity,
            attention_block: self.attention_block.unwrap_or(d.attention_block).max(1),
            ..d
        }
    }
}

impl BenchArgs {
    /// The plan these arguments ask for (not yet checked: [`BenchPlan::check`]).
    pub fn plan(&self) -> BenchPlan {
        let defaults = Grid::default_for(self.mode);
        let or_default = |given: &[u64], default: Vec<u64>| {
            if given.is_empty() {
                default
            } else {
                given.to_vec()
            }
        };
        BenchPlan {
            model: self.model.clone(),
            revision: self.revision.clone(),
            dtype: self.dtype,
            device: self.device,
            mode: self.mode,
            lora: self.lora_rank.map(|rank| LoraSetup {
                rank,
                targets: self.lora_targets.clone(),
            }),
            grid: Grid {
                // candle's quantized Llama runs one sequence (see BenchPlan::check).
                batches: if self.engine == EngineProfile::CandleQuantized {
                    or_default(&self.batch, vec![1])
                } else {
                    or_default(&self.batch, defaults.batches)
                },
                contexts: or_default(&self.context, defaults.contexts),
                decode_steps: self.decode_steps,
            },
            weights: self.weights.clone().unwrap_or_else(|| {
                WeightsChoice::default_for(&ModelRef::of(self.model.as_deref()))
            }),
            seed: self.seed,
            nvml_hz: self.nvml_hz,
            find_boundary: self.find_boundary.then_some(self.boundary_step),
            memory_limit: self.memory_limit,
            max_position: self.max_position,
            over_memory: self
                .over_memory
                .unwrap_or(OverMemory::default_for(self.device)),
            engine: self.engine,
            prefill_chunk: self.chunked.prefill_chunk,
            kv_capacity: self.chunked.kv_capacity,
            attention_block: self.chunked.attention_block,
            quant: self.quant,
        }
    }
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
