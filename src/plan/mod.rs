//! What a sweep measures, as one typed value, whichever door it came in by.
//!
//! A [`BenchPlan`] is built from the command line (`cli::bench`), from an HTTP request
//! (`serve::job`) or from a stored `run.json` (`bench --resume`, [`crate::store::RunInfo::plan`]),
//! and checked in one place, [`BenchPlan::check`], with the same parsers ([`DType`],
//! [`DeviceChoice`], [`Mode`], [`Target`] `FromStr`) and the same defaults ([`Grid::default_for`],
//! the `DEFAULT_*` constants). The doors only translate and print; an error names the field
//! the way the door it came from spells it ([`PlanError`]'s `Display` for the command line,
//! [`PlanError::api_message`] for HTTP).
//!
//! [`Grid`] is the batch x context part, checked against the model when it is known.

mod bench_plan;
mod grid;

pub use bench_plan::{
    BenchPlan, DEFAULT_BOUNDARY_STEP, DEFAULT_DTYPE, DEFAULT_LORA_TARGETS, DEFAULT_NVML_HZ,
    MAX_LORA_RANK, MAX_NVML_HZ, MEMORY_MARGIN_BYTES, MEMORY_MARGIN_PERCENT,
};
pub use grid::{Grid, DEFAULT_DECODE_STEPS, MAX_BATCH, MAX_CONTEXT, MAX_DECODE_STEPS, MAX_LIST};

pub use crate::model::ModelRef;
use serde::{Deserialize, Serialize};

/// A field of a plan, named as each door spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Model,
    Dtype,
    Device,
    Mode,
    Batch,
    Context,
    DecodeSteps,
    LoraRank,
    LoraTargets,
    Weights,
    NvmlHz,
    FindBoundary,
    MemoryLimit,
    MaxPosition,
    Engine,
    OverMemory,
    PrefillChunk,
    KvCapacity,
    AttentionBlock,
    Quant,
}

impl Field {
    /// The key in an HTTP request and in run.json's `settings`.
    pub const fn key(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Dtype => "dtype",
            Field::Device => "device",
            Field::Mode => "mode",
            Field::Batch => "batch",
            Field::Context => "context",
            Field::DecodeSteps => "decode_steps",
            Field::LoraRank => "lora_rank",
            Field::LoraTargets => "lora_targets",
            Field::Weights => "weights",
            Field::NvmlHz => "nvml_hz",
            Field::FindBoundary => "find_boundary",
            Field::MemoryLimit => "memory_limit",
            Field::MaxPosition => "max_position",
            Field::Engine => "engine",
            Field::OverMemory => "over_memory",
            Field::PrefillChunk => "prefill_chunk",
            Field::KvCapacity => "kv_capacity",
            Field::AttentionBlock => "attention_block",
            Field::Quant => "quant",
        }
    }

    /// The command-line flag: `--lora-rank`.
    pub fn flag(self) -> String {
        format!("--{}", self.key().replace('_', "-"))
    }
}

/// What a field needs to make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A training sweep.
    Train,
    /// An inference sweep.
    Inference,
    /// A GPU (out-of-memory is an error on the CPU, and there is no device memory to limit).
    Gpu,
    /// A Hugging Face model id to download from.
    HubModel,
    /// LoRA adapters (a rank).
    LoraRank,
    /// The chunked engine.
    Chunked,
    /// The quantized engine.
    Quantized,
}

impl Need {
    /// What is needed, in the command line's words.
    pub fn cli(self) -> &'static str {
        match self {
            Need::Train => "--mode train",
            Need::Inference => "--mode inference (with --mode train the grid's out-of-memory points are the boundary)",
            Need::Gpu => "a GPU (--device cuda): on the CPU an allocation failure aborts the process instead of failing one point",
            Need::HubModel => "--model to be a Hugging Face model id (owner/name)",
            Need::LoraRank => "--lora-rank",
            Need::Chunked => "--engine candle-chunked",
            Need::Quantized => "--engine candle-quantized",
        }
    }

    /// What is needed, in the HTTP API's words.
    pub fn api(self) -> &'static str {
        match self {
            Need::Train => "\"mode\": \"train\"",
            Need::Inference => "\"mode\": \"inference\"",
            Need::Gpu => "\"device\": \"cuda\"",
            Need::HubModel => "a Hugging Face model id in \"model\"",
            Need::LoraRank => "lora_rank",
            Need::Chunked => "\"engine\": \"candle-chunked\"",
            Need::Quantized => "\"engine\": \"candle-quantized\"",
        }
    }
}

/// Why a plan cannot be measured. `Display` names command-line flags; see
/// [`PlanError::api_message`] for the HTTP API's field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Invalid {
        field: Field,
        value: String,
        reason: String,
    },
    Empty {
        field: Field,
    },
    Needs {
        field: Field,
        needs: Need,
    },
}

impl std::error::Error for PlanError {}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(Field::flag, Need::cli))
    }
}

impl PlanError {
    /// The field at fault.
    pub fn field(&self) -> Field {
        match self {
            PlanError::Invalid { field, .. }
            | PlanError::Empty { field }
            | PlanError::Needs { field, .. } => *field,
        }
    }

    /// The message with the HTTP API's (and run.json's) field names: `lora_rank: ...`.
    pub fn api_message(&self) -> String {
        match self {
            PlanError::Invalid {
                field,
                value,
                reason,
            } => format!("{}: {value}: {reason}", field.key()),
            PlanError::Empty { field } => {
                format!("{}: at least one value is needed", field.key())
            }
            PlanError::Needs { field, needs } => {
                format!("{}: needs {}", field.key(), needs.api())
            }
        }
    }

    /// The command line's message with the field named by `name` (e.g. the daemon's
    /// `--bench-*` flags).
    pub fn render(&self, name: impl Fn(Field) -> String, need: fn(Need) -> &'static str) -> String {
        match self {
            PlanError::Invalid {
                field,
                value,
                reason,
            } => format!("{} {value}: {reason}", name(*field)),
            PlanError::Empty { field } => {
                format!("{}: at least one value is needed", name(*field))
            }
            PlanError::Needs { field, needs } => format!("{} needs {}", name(*field), need(*needs)),
        }
    }

    fn invalid(field: Field, value: impl ToString, reason: impl Into<String>) -> Self {
        PlanError::Invalid {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// What a sweep measures at each point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A prefill, then decode steps with the KV cache.
    #[default]
    Inference,
    /// Two training steps: forward, loss over every position, backward, AdamW.
    Train,
}

impl Mode {
    /// Inference (run.json leaves `mode` out then).
    pub fn is_inference(&self) -> bool {
        *self == Mode::Inference
    }

    /// Records stored per grid point: prefill and decode, or the four training phases.
    pub const fn phases_per_point(self) -> u64 {
        match self {
            Mode::Inference => 2,
            Mode::Train => 4,
        }
    }
}

names!(Mode {
    Inference => "inference",
    Train => "train",
});

/// What a sweep does with points whose estimate exceeds the memory the device can give.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverMemory {
    /// Refuse the whole sweep before anything runs, naming the points (exit 2).
    #[default]
    Refuse,
    /// Record those points as `oom`, predicted and not run, and measure the rest.
    Skip,
    /// Measure them anyway (GPU only, and its default: an out-of-memory point is a recorded
    /// result there and shows where the boundary is; on the CPU it would abort the process).
    Run,
}

impl OverMemory {
    /// The serialised default (run.json leaves it out then).
    pub fn is_refuse(&self) -> bool {
        *self == OverMemory::Refuse
    }

    /// What a sweep on `device` does unless told: refuse on the CPU, run on a GPU.
    pub fn default_for(device: DeviceChoice) -> OverMemory {
        match device {
            DeviceChoice::Cpu => OverMemory::Refuse,
            DeviceChoice::Cuda => OverMemory::Run,
        }
    }
}

names!(OverMemory {
    Refuse => "refuse",
    Skip => "skip",
    Run => "run",
});

/// Where a sweep measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// candle's CPU backend, measured by the counting allocator.
    #[default]
    Cpu,
    /// CUDA device 0 (a binary built with `--features cuda`).
    Cuda,
}

names!(DeviceChoice {
    Cpu => "cpu",
    Cuda => "cuda",
});

/// Where the weights come from; stored as `synthetic`, `download` or the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsChoice {
    /// Seeded random values of the checkpoint's shapes.
    Synthetic,
    /// The model id's safetensors from the Hub.
    Download,
    /// A directory of `*.safetensors` files.
    Dir(String),
}

impl WeightsChoice {
    /// The default for a model: `download` for a Hub model id, else `synthetic`.
    pub fn default_for(model: &ModelRef) -> Self {
        match model {
            ModelRef::Hub(_) => WeightsChoice::Download,
            _ => WeightsChoice::Synthetic,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            WeightsChoice::Synthetic => "synthetic",
            WeightsChoice::Download => "download",
            WeightsChoice::Dir(d) => d,
        }
    }
}

impl std::str::FromStr for WeightsChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" => return Err("\"\": use synthetic, download or a directory".into()),
            "synthetic" => WeightsChoice::Synthetic,
            "download" => WeightsChoice::Download,
            dir => WeightsChoice::Dir(dir.to_string()),
        })
    }
}

impl Serialize for WeightsChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WeightsChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
