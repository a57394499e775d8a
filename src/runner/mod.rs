//! The measured side: candle-transformers' Llama, real forward passes, real allocations.
//!
//! This is the only module that imports candle. A [`Runner`] holds one loaded model;
//! [`Runner::run_point`] measures one (batch, context) point: a prefill with a fresh
//! `Cache`, then decode steps with the KV cache, each phase's peak read from a
//! [`MemoryProbe`].

pub mod checkpoint;
pub mod chunked;
pub mod quantized;
pub mod train;
mod weights;

pub use weights::{candle_config, check_chunked};
pub(crate) use weights::{candle_dtype, local_tensors, synthetic_tensor, SplitMix};

use crate::estimate::candle_chunked::Knobs;
use crate::estimate::{EngineProfile, Workload};
use crate::probe::MemoryProbe;
use crate::spec::{DType, ModelSpec};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Errors from loading or running a model.
/// "tensor `name`: " for a tensor's error, nothing for a whole file's.
fn tensor_prefix(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("tensor `{name}`: ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config describes something candle-transformers' llama cannot run.
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
    /// No `*.safetensors` file in the weights directory.
    #[error("{path}: no .safetensors files found")]
    NoWeights { path: PathBuf },
    /// A checkpoint tensor is missing or has the wrong shape for the config.
    #[error("{path}: {}{reason}", tensor_prefix(.name))]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    /// The device ran out of memory: a result, not a failure (see [`Runner::run_point`]).
    #[error("out of memory on {device}: {message}")]
    OutOfMemory { device: String, message: String },
    /// The device cannot be opened (no CUDA driver, no GPU, a binary built without `cuda`).
    #[error("{0}")]
    Device(String),
    /// Anything candle reports.
    #[error("candle")]
    Candle(#[from] candle_core::Error),
}

/// Whether a candle error is the device running out of memory (the driver's
/// CUDA_ERROR_OUT_OF_MEMORY, cuBLAS's failed allocation).
fn is_oom(e: &candle_core::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("OUT_OF_MEMORY")
        || text.contains("ALLOC_FAILED")
        || text.contains("out of memory")
}

impl RunError {
    /// A stable short name, for JSON output and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Unsupported { .. } => "unsupported",
            RunError::NoWeights { .. } => "no_weights",
            RunError::BadTensor { .. } => "bad_tensor",
            RunError::OutOfMemory { .. } => "oom",
            RunError::Device(_) => "device",
            RunError::Candle(_) => "candle",
        }
    }
}

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// Seeded random values of the right shapes: the same bytes as the real checkpoint.
    Synthetic { seed: u64 },
    /// `*.safetensors` files in a local directory.
    Local(PathBuf),
}

impl WeightsSource {
    /// How the source is recorded in results.
    pub fn describe(&self) -> String {
        match self {
            WeightsSource::Synthetic { seed } => format!("synthetic (seed {seed})"),
            WeightsSource::Local(p) => format!("local {}", p.display()),
        }
    }
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    /// A CUDA device by ordinal (needs a binary built with `--features cuda`).
    Cuda(usize),
}

impl DeviceKind {
    pub fn describe(&self) -> String {
        match self {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Cuda(i) => format!("cuda:{i}"),
        }
    }
}

/// An opened device: candle's handle plus, on CUDA, the default memory pool's probe.
pub struct Accel {
    device: Device,
    kind: DeviceKind,
    /// The default memory pool's probe: on CUDA only (the type is a stub without `cuda`).
    pool: Option<crate::probe::cuda_pool::CudaPoolProbe>,
}

impl Accel {
    /// Open the device (on CUDA this creates the context, cuBLAS and cuRAND handles).
    ///
    /// # Errors
    /// [`RunError::Device`] when CUDA is asked for and unavailable.
    pub fn open(kind: DeviceKind) -> Result<Self, RunError> {
        match kind {
            DeviceKind::Cpu => Ok(Self {
                device: Device::Cpu,
                kind,
                pool: None,
            }),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda(i) => {
                let device = Device::new_cuda(i)
                    .map_err(|e| RunError::Device(format!("CUDA device {i}: {e}")))?;
                let stream = device
                    .as_cuda_device()
                    .map_err(|e| RunError::Device(e.to_string()))?
                    .cuda_stream();
                let pool = crate::probe::cuda_pool::CudaPoolProbe::new(stream)
                    .map_err(|e| RunError::Device(format!("CUDA device {i} memory pool: {e}")))?;
                Ok(Self {
                    device,
                    kind,
                    pool: Some(pool),
                })
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda(_) => Err(RunError::Device(NO_CUDA.into())),
        }
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// The default memory pool's probe (CUDA only).
    pub fn pool(&self) -> Option<&crate::probe::cuda_pool::CudaPoolProbe> {
        self.pool.as_ref()
    }

    /// Wait for queued work (timings on CUDA are taken after this).
    pub fn synchronize(&self) -> Result<(), RunError> {
        Ok(self.device.synchronize()?)
    }

    /// Wait for queued work and hand the pool's unused reservation back to the driver.
    pub fn settle(&self) {
        if let Some(p) = &self.pool {
            p.trim();
            return;
        }
        let _ = self.device.synchronize();
    }
}

/// gemm's largest reduction block (`kc`) for f32 on this CPU, as gemm-common 0.19 computes it
/// from the L1 data cache (`cache::kernel_params`) for the micro-kernel it picks here (FMA:
/// 16 x 6 tiles; AVX-512: 64 x 6). It sets how much of a weight gemm packs per call, which
/// the CPU estimate of candle-chunked's linear layers replays: 512 with a 32 KiB 8-way L1d
/// (measured on an AMD EPYC development machine, 2026-12-04), 1024 by the same formula with
/// 48 KiB 12-way (the estimate's former constant, fitted on the machine that built it).
pub fn gemm_kc_max() -> u64 {
    #[cfg(target_arch = "x86_64")]
    let (mr, nr) = if is_x86_feature_detected!("avx512f") {
        (64, 6)
    } else {
        (16, 6)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (mr, nr) = (16, 6);
    // A reduction long enough to be split into blocks of the largest size, which it divides.
    let k = 1 << 20;
    gemm_common::cache::kernel_params(4096, 4096, k, mr, nr, 4).kc as u64
}

/// Why a binary without the `cuda` feature cannot open a CUDA device.
pub const NO_CUDA: &str = "this vramprobe was built without CUDA: build it with \
     scripts/build-cuda.sh (cargo build --features cuda), or use --device cpu";

/// One phase's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseMeasurement {
    /// Peak bytes above the run's baseline (so the weights are included), primary probe.
    pub peak_bytes: u64,
    /// Every probe's raw high-water mark in this phase and its reading when the point
    /// started, in the order the probes were given: `(name, start, peak)`.
    pub raw: Vec<(&'static str, u64, u64)>,
    /// Wall time of one forward pass (the prefill, or the mean decode step).
    pub secs_per_forward: f64,
    /// Tokens processed per second (batch * tokens / time).
    pub tokens_per_sec: f64,
    /// The decode phase step by step (empty for other phases).
    pub steps: Vec<StepReading>,
}

/// Every probe at the end of one decode step, and after the device settled.
///
/// With the pool's release threshold at "never" ([`crate::probe::cuda_pool`]), nothing is
/// handed back inside a step, so the reservation read at the step's end is the step's
/// highest; `settled` is what is left once the step's synchronisation trimmed the pool.
/// The difference is what the pool took for the step and gave back.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReading {
    /// Tokens in the KV cache after this step.
    pub kv_len: u64,
    /// Wall time of the step's forward pass.
    pub secs: f64,
    /// `(name, current, peak since the phase began)` per probe, before anything is released.
    pub end: Vec<(&'static str, u64, u64)>,
    /// `(name, current)` per probe after the device settled (GPU only: on the CPU nothing is
    /// held back to release).
    pub settled: Vec<(&'static str, u64)>,
}

/// Why a phase produced no measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseFailure {
    /// The device ran out of memory (else: the device refused the work, e.g. candle 0.11's
    /// CUDA kernels truncate element counts to u32, so a tensor of exactly 2^32 elements
    /// launches an empty grid: CUDA_ERROR_INVALID_VALUE).
    pub oom: bool,
    pub message: String,
}

/// Both phases of one point; a phase that failed on the device is `Err` (the decode phase of
/// a point whose prefill failed is not attempted).
#[derive(Debug, Clone, PartialEq)]
pub struct PointMeasurement {
    pub prefill: Result<PhaseMeasurement, PhaseFailure>,
    pub decode: Result<PhaseMeasurement, PhaseFailure>,
}

/// One phase's measurement from every probe's reading at the point's start and its peak now;
/// the primary probe's peak less `offset` (what was in use that is not the weights).
fn phase_measurement(
    probes: &[&dyn MemoryProbe],
    start: &[u64],
    offset: u64,
    secs: f64,
    tokens: usize,
) -> PhaseMeasurement {
    let raw: Vec<(&'static str, u64, u64)> = probes
        .iter()
        .zip(start)
        .map(|(p, &st)| (p.name(), st, p.peak_bytes()))
        .collect();
    PhaseMeasurement {
        peak_bytes: raw[0].2.saturating_sub(offset),
        raw,
        secs_per_forward: secs,
        tokens_per_sec: tokens as f64 / secs.max(1e-12),
        steps: Vec::new(),
    }
}

/// A failed phase: a result on a GPU (the device is still usable after an out-of-memory or
/// a refused launch) or for out-of-memory anywhere; an error on the CPU otherwise.
fn phase_failure(e: candle_core::Error, on_gpu: bool) -> Result<PhaseFailure, RunError> {
    if is_oom(&e) || on_gpu {
        Ok(PhaseFailure {
            oom: is_oom(&e),
            message: format!("{e}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        })
    } else {
        Err(RunError::Candle(e))
    }
}

/// gemm keeps an L2-sized packing slab per thread, created on a thread's first matmul.
/// Which rayon workers a small warm-up reaches is up to the scheduler, so create the slab on
/// every worker (and this thread) now; otherwise a point measured later pays it (seen: +2 MiB
/// on some runs and not others).
fn create_gemm_slabs() {
    rayon::broadcast(|_| gemm_common::gemm::L2_SLAB.with(|slab| drop(slab.borrow())));
    gemm_common::gemm::L2_SLAB.with(|slab| drop(slab.borrow()));
}

/// The forward pass a [`Runner`] measures.
enum Engine {
    /// candle-transformers' Llama (`candle-eager`), with its config.
    Eager(Box<Llama>, Config),
    /// vramprobe's serving-shaped Llama (`candle-chunked`).
    Chunked(chunked::ChunkedLlama),
    /// candle-transformers' quantized Llama (`candle-quantized`).
    Quantized(quantized::QuantizedLlama),
}

/// One point's cache: candle-transformers' `Cache`, the preallocated one, or (quantized) a
/// fresh model, whose layers hold the cache and the masks.
enum PointCache {
    Eager(Cache),
    Chunked(chunked::KvCache),
    Quantized(quantized::QuantizedLlama),
}

/// A loaded model ready to be measured.
pub struct Runner {
    engine: Engine,
    spec: ModelSpec,
    dtype: candle_core::DType,
    device: Device,
    accel: std::sync::Arc<Accel>,
    /// Bytes the weights occupy, as measured.
    pub weights_bytes: u64,
    /// Bytes left allocated by the warm-up pass (thread pools, gemm buffers): one-off
    /// runtime state, excluded from every point.
    pub warmup_residue_bytes: u64,
}

impl Runner {
    /// Build the model for `engine` (`candle-eager` or `candle-chunked`, the latter with
    /// `knobs`) on `accel`'s device and measure what its weights occupy (with `probe`).
    ///
    /// # Errors
    /// [`RunError::Unsupported`] for configs the engine cannot run and engines `bench`
    /// does not measure; for local weights [`RunError::NoWeights`] and
    /// [`RunError::BadTensor`]; [`RunError::Candle`] otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        spec: &ModelSpec,
        dtype: DType,
        weights: &WeightsSource,
        engine: EngineProfile,
        knobs: Knobs,
        accel: std::sync::Arc<Accel>,
        probe: &dyn MemoryProbe,
    ) -> Result<Self, RunError> {
        if engine == EngineProfile::CandleQuantized {
            return Self::load_quantized(spec, weights, knobs, accel, probe);
        }
        let config = match engine {
            EngineProfile::CandleEager => Some(candle_config(spec)?),
            EngineProfile::CandleChunked => {
                check_chunked(spec)?;
                None
            }
            EngineProfile::CandleFlash => {
                check_flash(spec, dtype, &accel.device)?;
                None
            }
            other => {
                return Err(RunError::Unsupported {
                    path: spec.source.clone(),
                    reason: format!(
                        "engine {} is estimated only; bench measures candle-eager, \
                         candle-chunked, candle-quantized and candle-flash",
                        other.as_str()
                    ),
                })
            }
        };
        let device = accel.device.clone();
        let cdt = candle_dtype(dtype);
        if let WeightsSource::Synthetic { seed } = weights {
            if !device.is_cpu() {
                device.set_seed(*seed)?;
            }
        }
        accel.settle();
        let baseline_bytes = probe.current_bytes();
        let tensors = match weights {
            WeightsSource::Synthetic { seed } => spec
                .tensors()
                .iter()
                .enumerate()
                .map(|(i, t)| Ok((t.name.clone(), synthetic_tensor(t, *seed, i, cdt, &device)?)))
                .collect::<Result<HashMap<_, _>, RunError>>()?,
            WeightsSource::Local(dir) => local_tensors(spec, dir, cdt, &device)?,
        };
        let vb = VarBuilder::from_tensors(tensors, cdt, &device);
        let engine = match config {
            Some(config) => Engine::Eager(Box::new(Llama::load(vb, &config)?), config),
            None => {
                let mut model = chunked::ChunkedLlama::load(vb, spec, knobs)?;
                model.flash = engine == EngineProfile::CandleFlash;
                Engine::Chunked(model)
            }
        };
        Self::loaded(spec, cdt, engine, accel, probe, baseline_bytes)
    }

    /// The quantized engine: GGUF weights (a file, or synthetic ones quantized in memory).
    /// Its weights are measured after the warm-up, because candle's x86 kernels repack
    /// quantized weights on their first use and keep the tiles; the one-off runtime buffers
    /// (thread pools, gemm's per-thread slabs) are created before the baseline instead.
    fn load_quantized(
        spec: &ModelSpec,
        weights: &WeightsSource,
        knobs: Knobs,
        accel: std::sync::Arc<Accel>,
        probe: &dyn MemoryProbe,
    ) -> Result<Self, RunError> {
        let device = accel.device.clone();
        let source = match weights {
            WeightsSource::Synthetic { seed } => {
                quantized::check(spec, knobs.quant)?;
                quantized::Source::Synthetic {
                    seed: *seed,
                    quant: knobs.quant,
                }
            }
            WeightsSource::Local(p) if p.extension().is_some_and(|x| x == "gguf") => {
                quantized::check(spec, crate::estimate::candle_quantized::GgmlType::F32)?;
                quantized::Source::File(p)
            }
            WeightsSource::Local(p) => {
                return Err(RunError::BadTensor {
                    path: p.clone(),
                    name: String::new(),
                    reason: "candle-quantized loads a .gguf file (or synthetic weights)".into(),
                })
            }
        };
        create_gemm_slabs();
        if device.is_cpu() {
            quantized::warm_runtime()?;
        }
        accel.settle();
        let baseline_bytes = probe.current_bytes();
        let model = quantized::QuantizedLlama::load(spec, source, &device)?;
        let engine = Engine::Quantized(model);
        let mut runner = Runner {
            engine,
            spec: spec.clone(),
            dtype: candle_core::DType::F32,
            device,
            accel,
            weights_bytes: 0,
            warmup_residue_bytes: 0,
        };
        runner.warm_up(probe)?;
        runner.weights_bytes = probe.current_bytes().saturating_sub(baseline_bytes);
        runner.warmup_residue_bytes = 0;
        Ok(runner)
    }

    /// A loaded model, its weights measured from `baseline_bytes`, warmed up.
    fn loaded(
        spec: &ModelSpec,
        cdt: candle_core::DType,
        engine: Engine,
        accel: std::sync::Arc<Accel>,
        probe: &dyn MemoryProbe,
        baseline_bytes: u64,
    ) -> Result<Self, RunError> {
        let device = accel.device.clone();
        // The f32 staging tensors of synthetic weights are freed; give their space back.
        accel.settle();
        let weights_bytes = probe.current_bytes().saturating_sub(baseline_bytes);
        let mut runner = Runner {
            engine,
            spec: spec.clone(),
            dtype: cdt,
            device,
            accel,
            weights_bytes,
            warmup_residue_bytes: 0,
        };
        runner.warm_up(probe)?;
        Ok(runner)
    }

    /// A fresh cache for a point of `batch` sequences and `capacity` positions (the
    /// chunked engine's; candle-transformers' grows).
    fn new_cache(&self, batch: usize, capacity: usize) -> Result<PointCache, RunError> {
        Ok(match &self.engine {
            Engine::Eager(_, config) => {
                PointCache::Eager(Cache::new(true, self.dtype, config, &self.device)?)
            }
            Engine::Chunked(m) => PointCache::Chunked(m.new_cache(batch, capacity)?),
            Engine::Quantized(m) => PointCache::Quantized(m.fresh()),
        })
    }

    /// The prefill of `batch` prompts of `len` tokens; the last position's logits.
    fn prefill(
        &self,
        cache: &mut PointCache,
        batch: usize,
        len: usize,
    ) -> Result<Tensor, RunError> {
        Ok(match (&self.engine, cache) {
            (Engine::Eager(m, _), PointCache::Eager(c)) => {
                let tokens = self.tokens(batch, len, 0)?;
                m.forward(&tokens, 0, c)?
            }
            (Engine::Chunked(m), PointCache::Chunked(c)) => {
                m.prefill(c, batch, len, |b, n, o| self.token_ids(b, n, o))?
            }
            (Engine::Quantized(_), PointCache::Quantized(m)) => {
                let tokens = self.tokens(batch, len, 0)?;
                m.forward(&tokens, 0)?
            }
            _ => return Err(RunError::Device("a cache of another engine".into())),
        })
    }

    /// One decode step at position `pos`; the logits.
    fn step(&self, cache: &mut PointCache, batch: usize, pos: usize) -> Result<Tensor, RunError> {
        let next = self.tokens(batch, 1, pos)?;
        Ok(match (&self.engine, cache) {
            (Engine::Eager(m, _), PointCache::Eager(c)) => m.forward(&next, pos, c)?,
            (Engine::Chunked(m), PointCache::Chunked(c)) => m
                .forward(&next, pos, c, true)?
                .ok_or_else(|| RunError::Device("no logits".into()))?,
            (Engine::Quantized(_), PointCache::Quantized(m)) => m.forward(&next, pos)?,
            _ => return Err(RunError::Device("a cache of another engine".into())),
        })
    }

    /// The capacity a point's cache gets (the chunked engine's settings decide).
    fn capacity(&self, w: Workload) -> usize {
        match &self.engine {
            Engine::Chunked(m) => m.knobs.capacity(w) as usize,
            Engine::Eager(..) | Engine::Quantized(_) => 0,
        }
    }

    /// One small prefill and decode step, so that one-off runtime buffers (rayon's pool,
    /// gemm's per-thread packing space) exist before anything is measured.
    fn warm_up(&mut self, probe: &dyn MemoryProbe) -> Result<(), RunError> {
        let before = probe.current_bytes();
        create_gemm_slabs();
        // candle's quantized Llama prefills one sequence at a time (see quantized::check_batch).
        let b = if matches!(self.engine, Engine::Quantized(_)) {
            1
        } else {
            2
        };
        self.on_point_thread(|| {
            let s = 16.min(self.spec.max_position_embeddings as usize - 1);
            let mut cache = self.new_cache(b, s + 1)?;
            let _ = self.prefill(&mut cache, b, s)?;
            let _ = self.step(&mut cache, b, s)?;
            Ok::<_, RunError>(())
        })?;
        self.accel.settle();
        self.warmup_residue_bytes = probe.current_bytes().saturating_sub(before);
        Ok(())
    }

    /// Deterministic token ids, spread over the vocabulary.
    fn tokens(&self, batch: usize, len: usize, offset: usize) -> Result<Tensor, RunError> {
        Ok(self.token_ids(batch, len, offset)?)
    }

    fn token_ids(&self, batch: usize, len: usize, offset: usize) -> candle_core::Result<Tensor> {
        let vocab = self.spec.vocab_size as usize;
        let ids: Vec<u32> = (0..batch * len)
            .map(|i| ((offset + i) * 7919 % vocab) as u32)
            .collect();
        Tensor::from_vec(ids, (batch, len), &self.device)
    }

    /// Measure one point: a prefill of `context` tokens for `batch` sequences with a fresh
    /// cache (masks are cached per shape inside it), then `decode_steps` single-token steps.
    /// `probes[0]` is the primary source (its peak becomes `peak_bytes`); every probe's raw
    /// readings are kept. Between phases and after the point the device is settled (queued
    /// work waited for, the pool's unused reservation handed back).
    ///
    /// Running out of device memory is a result: the phase is `Err` with the message,
    /// everything of the point is freed, and the runner stays usable.
    ///
    /// # Errors
    /// [`RunError::Candle`] from the forward passes for anything but out-of-memory.
    pub fn run_point(
        &self,
        w: Workload,
        probes: &[&dyn MemoryProbe],
    ) -> Result<PointMeasurement, RunError> {
        if matches!(self.engine, Engine::Quantized(_)) {
            // A fresh model (no cached masks), made before the point starts counting.
            return self.on_point_thread(|| {
                let fresh = self.new_cache(w.batch as usize, 0)?;
                self.run_point_with(w, probes, Some(fresh))
            });
        }
        self.run_point_with(w, probes, None)
    }

    /// `f` on a thread of its own for the quantized engine on the CPU (candle's quantized
    /// matmul keeps a thread-local input scratch that only grows: a fresh thread gives each
    /// point its own, freed with the thread), on this thread otherwise.
    fn on_point_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        if !(matches!(self.engine, Engine::Quantized(_)) && self.device.is_cpu()) {
            return f();
        }
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                // gemm's per-thread packing slab, before anything is counted.
                gemm_common::gemm::L2_SLAB.with(|slab| drop(slab.borrow()));
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// [`Runner::run_point`] with the point's cache already made (`premade`) or made here.
    fn run_point_with(
        &self,
        w: Workload,
        probes: &[&dyn MemoryProbe],
        premade: Option<PointCache>,
    ) -> Result<PointMeasurement, RunError> {
        let (b, s) = (w.batch as usize, w.context as usize);
        let steps = w.decode_steps.max(1) as usize;
        let primary = probes[0];
        // The decode trace's memory, made before anything is counted (on the CPU the
        // allocator probe would otherwise see it).
        let blank = || StepReading {
            kv_len: 0,
            secs: 0.0,
            end: Vec::with_capacity(probes.len()),
            settled: Vec::with_capacity(probes.len()),
        };
        let mut trace: Vec<StepReading> = (0..steps).map(|_| blank()).collect();
        self.accel.settle();
        // Everything in use now that is not the weights (allocations made before them, the
        // warm-up's runtime buffers, the caller's bookkeeping) is not part of the point.
        let offset = primary.current_bytes().saturating_sub(self.weights_bytes);
        let start: Vec<u64> = probes.iter().map(|p| p.current_bytes()).collect();
        let finish =
            |secs: f64, tokens: usize| phase_measurement(probes, &start, offset, secs, tokens);
        // On a GPU every failure of a forward pass is a result (the device is still usable
        // after an out-of-memory or a refused launch); on the CPU it is an error.
        let on_gpu = !self.device.is_cpu();
        let failure = |e: candle_core::Error| phase_failure(e, on_gpu);

        for p in probes {
            p.reset_peak();
        }
        let t0 = Instant::now();
        let made = match premade {
            Some(c) => Ok(c),
            None => self.new_cache(b, self.capacity(w)),
        };
        let mut cache = match made {
            Ok(c) => Some(c),
            Err(RunError::Candle(e)) => {
                let f = failure(e)?;
                self.accel.settle();
                let not_run = PhaseFailure {
                    oom: f.oom,
                    message: format!("not run: the prefill failed ({})", f.message),
                };
                return Ok(PointMeasurement {
                    prefill: Err(f),
                    decode: Err(not_run),
                });
            }
            Err(e) => return Err(e),
        };
        let prefill = (|| {
            let c = cache
                .as_mut()
                .ok_or_else(|| RunError::Device("no cache".into()))?;
            let logits = self.prefill(c, b, s)?;
            self.device.synchronize()?;
            drop(logits);
            Ok::<_, RunError>(())
        })();
        let prefill = match prefill {
            Ok(()) => Ok(finish(t0.elapsed().as_secs_f64(), b * s)),
            Err(RunError::Candle(e)) => Err(failure(e)?),
            Err(e) => return Err(e),
        };
        if let Err(f) = &prefill {
            drop(cache);
            self.accel.settle();
            return Ok(PointMeasurement {
                prefill: prefill.clone(),
                decode: Err(PhaseFailure {
                    oom: f.oom,
                    message: format!("not run: the prefill failed ({})", f.message),
                }),
            });
        }
        // Between the phases: wait, hand back the prefill's reservation, restart the peaks.
        self.accel.settle();
        for p in probes {
            p.reset_peak();
        }
        // Like a generation loop, which copies each sampled token to the host: every step
        // ends with a synchronisation, where the pool (release threshold 0 by default) hands
        // its unused reservation back. The probes are read at each step's end, before that
        // release, so the step's reservation is seen; the probes' time is not counted.
        let mut decode_secs = 0.0;
        let decode = (|| {
            for (i, r) in trace.iter_mut().enumerate() {
                let t = Instant::now();
                let c = cache
                    .as_mut()
                    .ok_or_else(|| RunError::Device("no cache".into()))?;
                let logits = self.step(c, b, s + i)?;
                self.device.synchronize()?;
                let secs = t.elapsed().as_secs_f64();
                decode_secs += secs;
                drop(logits);
                r.kv_len = (s + i + 1) as u64;
                r.secs = secs;
                r.end.extend(
                    probes
                        .iter()
                        .map(|p| (p.name(), p.current_bytes(), p.peak_bytes())),
                );
                if on_gpu {
                    self.accel.settle();
                    r.settled
                        .extend(probes.iter().map(|p| (p.name(), p.current_bytes())));
                }
            }
            Ok::<_, RunError>(())
        })();
        let decode = match decode {
            Ok(()) => Ok(PhaseMeasurement {
                steps: trace,
                ..finish(decode_secs / steps as f64, b)
            }),
            Err(RunError::Candle(e)) => Err(failure(e)?),
            Err(e) => return Err(e),
        };
        drop(cache);
        self.accel.settle();
        Ok(PointMeasurement { prefill, decode })
    }
}

/// Why `candle-flash` cannot run here, if it cannot: a binary built without the
/// `flash-attn` feature, a device other than CUDA, a dtype other than bf16/f16, or a head
/// dimension the build did not compile (it has the 128 kernels only).
///
/// # Errors
/// [`RunError::Unsupported`] naming what is missing.
pub fn check_flash(spec: &ModelSpec, dtype: DType, device: &Device) -> Result<(), RunError> {
    let unsupported = |reason: String| {
        Err(RunError::Unsupported {
            path: spec.source.clone(),
            reason,
        })
    };
    if !cfg!(feature = "flash-attn") {
        return unsupported(
            "candle-flash needs a binary built with FlashAttention-2 (scripts/build-cuda.sh \
             --flash-attn); this one was not (it can still be estimated)"
                .into(),
        );
    }
    if !device.is_cuda() {
        return unsupported("candle-flash runs on CUDA only (FlashAttention-2 kernels)".into());
    }
    if dtype == DType::F32 {
        return unsupported(
            "candle-flash runs in bf16 or f16 (FlashAttention-2 has no f32)".into(),
        );
    }
    if spec.head_dim != 128 {
        return unsupported(format!(
            "head_dim {}: vramprobe's FlashAttention-2 build has the head_dim-128 kernels only",
            spec.head_dim
        ));
    }
    check_chunked(spec)
}

/// Why `engine` cannot run `spec`, if it cannot (checked before a run directory is made):
/// what candle-transformers' llama, vramprobe's chunked Llama or quantized_llama have no
/// code for.
///
/// # Errors
/// [`RunError::Unsupported`] naming the config and what it has.
pub fn check_runnable(spec: &ModelSpec, engine: EngineProfile) -> Result<(), RunError> {
    match engine {
        EngineProfile::CandleChunked | EngineProfile::CandleFlash => check_chunked(spec),
        EngineProfile::CandleQuantized => match spec.not_llama() {
            Some(what) => Err(RunError::Unsupported {
                path: spec.source.clone(),
                reason: format!("{what}, which candle-transformers' quantized_llama does not run"),
            }),
            None => Ok(()),
        },
        _ => candle_config(spec).map(|_| ()),
    }
}
