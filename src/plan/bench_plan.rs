//! [`BenchPlan`]: one sweep, checked in one place, and the command line that makes it.

use super::{
    DeviceChoice, Field, Grid, Mode, ModelRef, Need, OverMemory, PlanError, WeightsChoice,
};
use crate::estimate::candle_chunked::{Knobs, MIN_ATTENTION_BLOCK};
use crate::estimate::candle_quantized::{GgmlType, MAX_POSITIONS as QUANTIZED_MAX_POSITIONS};
use crate::estimate::candle_train::LoraSetup;
use crate::estimate::train::Target;
use crate::estimate::EngineProfile;
use crate::spec::DType;
use serde::{Deserialize, Serialize};

/// The element type a sweep runs in unless asked otherwise: f32, because candle's CPU
/// matmul widens bf16 to f32 anyway.
pub const DEFAULT_DTYPE: DType = DType::F32;
/// LoRA ranks accepted: beyond this an adapter is no longer low-rank for any model here.
pub const MAX_LORA_RANK: u64 = 4096;
/// NVML sampling rate unless asked otherwise, and the most accepted (NVML calls take a
/// driver lock).
pub const DEFAULT_NVML_HZ: u32 = 50;
pub const MAX_NVML_HZ: u32 = 100;
/// Resolution of the out-of-memory boundary search unless asked otherwise, in tokens.
pub const DEFAULT_BOUNDARY_STEP: u64 = 128;
/// The memory guard's margin over a point's estimate: 10% and 256 MiB (the runtime, the
/// binary, the allocator's slack) must be free beside it.
pub const MEMORY_MARGIN_PERCENT: u64 = 10;
pub const MEMORY_MARGIN_BYTES: u64 = 256 << 20;
/// The LoRA targets unless asked otherwise: q and v, as PEFT's Llama default.
pub const DEFAULT_LORA_TARGETS: [Target; 2] = [Target::Q, Target::V];
/// The largest value of the chunked engine's settings (2^40: no sequence, chunk or block
/// comes near it, and every product of them stays in a u64).
pub const MAX_KNOB: u64 = 1 << 40;

/// One sweep: everything that decides what is measured.
///
/// Serialised, it is run.json's `settings` (so `bench --resume` measures the same way): the
/// fields in this order, `mode` only for training, `lora` only when set, and the grid not
/// at all (run.json keeps it beside the settings; [`crate::store::RunInfo::plan`] puts it
/// back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchPlan {
    /// `--model` as given (a path or a Hub id); None: the built-in tiny Llama.
    pub model: Option<String>,
    /// Hub revision when `model` is a model id.
    pub revision: Option<String>,
    pub dtype: DType,
    /// `synthetic`, `download` or a directory.
    pub weights: WeightsChoice,
    /// Seed of the synthetic weights.
    pub seed: u64,
    pub device: DeviceChoice,
    /// NVML sampler rate (CUDA only).
    pub nvml_hz: u32,
    /// After the grid, bisect per batch the largest context that fits, to this many tokens
    /// (CUDA only).
    pub find_boundary: Option<u64>,
    /// Measure as if the GPU had this many bytes for the process (CUDA only).
    pub memory_limit: Option<u64>,
    /// Override of the model's max_position_embeddings.
    pub max_position: Option<u64>,
    /// Absent in run.json for inference (as in runs made before training existed).
    #[serde(default, skip_serializing_if = "Mode::is_inference")]
    pub mode: Mode,
    /// LoRA adapters of a training sweep (None: every parameter is trained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSetup>,
    /// Points whose estimate exceeds the memory available: refuse the sweep, or skip them.
    #[serde(default, skip_serializing_if = "OverMemory::is_refuse")]
    pub over_memory: OverMemory,
    /// The engine measured; absent in run.json for candle-eager (runs made before there
    /// was a choice).
    #[serde(default, skip_serializing_if = "EngineProfile::is_candle_eager")]
    pub engine: EngineProfile,
    /// Tokens per prefill forward over the batch (candle-chunked only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<u64>,
    /// KV cache positions per sequence (candle-chunked only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_capacity: Option<u64>,
    /// Most elements of one attention score block (candle-chunked only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_block: Option<u64>,
    /// The GGML type of every weight (candle-quantized only; q4k when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<GgmlType>,
    #[serde(skip, default = "Grid::stored_beside")]
    pub grid: Grid,
}

impl Default for BenchPlan {
    /// The README's main job: the built-in model in f32 on the CPU, the default grid.
    fn default() -> Self {
        BenchPlan {
            model: None,
            revision: None,
            dtype: DEFAULT_DTYPE,
            device: DeviceChoice::Cpu,
            mode: Mode::Inference,
            lora: None,
            grid: Grid::default_for(Mode::Inference),
            over_memory: OverMemory::Refuse,
            weights: WeightsChoice::Synthetic,
            seed: 0,
            nvml_hz: DEFAULT_NVML_HZ,
            find_boundary: None,
            memory_limit: None,
            max_position: None,
            engine: EngineProfile::CandleEager,
            prefill_chunk: None,
            kv_capacity: None,
            attention_block: None,
            quant: None,
        }
    }
}

impl BenchPlan {
    /// Every check that needs no model and no device: values in range, combinations that
    /// make sense. The grid is checked against the model by [`Grid::workloads`].
    ///
    /// # Errors
    /// The first [`PlanError`] found, naming its field.
    pub fn check(&self) -> Result<(), PlanError> {
        if let Some(m) = &self.model {
            if m.is_empty() || m.len() > 512 || m.starts_with('-') || m.contains('\0') {
                return Err(PlanError::invalid(
                    Field::Model,
                    format!("{m:?}"),
                    "is not a model path or Hub id",
                ));
            }
        }
        self.grid.check_values()?;
        if let Some(l) = &self.lora {
            if self.mode != Mode::Train {
                return Err(PlanError::Needs {
                    field: Field::LoraRank,
                    needs: Need::Train,
                });
            }
            if !(1..=MAX_LORA_RANK).contains(&l.rank) {
                return Err(PlanError::invalid(
                    Field::LoraRank,
                    l.rank,
                    format!("must be between 1 and {MAX_LORA_RANK}"),
                ));
            }
            if l.targets.is_empty() {
                return Err(PlanError::Empty {
                    field: Field::LoraTargets,
                });
            }
        }
        if !(1..=MAX_NVML_HZ).contains(&self.nvml_hz) {
            return Err(PlanError::invalid(
                Field::NvmlHz,
                self.nvml_hz,
                format!("must be between 1 and {MAX_NVML_HZ}"),
            ));
        }
        if self.weights == WeightsChoice::Download
            && !matches!(ModelRef::of(self.model.as_deref()), ModelRef::Hub(_))
        {
            return Err(PlanError::Needs {
                field: Field::Weights,
                needs: Need::HubModel,
            });
        }
        if let Some(step) = self.find_boundary {
            if step == 0 {
                return Err(PlanError::invalid(
                    Field::FindBoundary,
                    step,
                    "the step must be at least 1 token",
                ));
            }
            if self.device != DeviceChoice::Cuda {
                return Err(PlanError::Needs {
                    field: Field::FindBoundary,
                    needs: Need::Gpu,
                });
            }
            if self.mode == Mode::Train {
                return Err(PlanError::Needs {
                    field: Field::FindBoundary,
                    needs: Need::Inference,
                });
            }
        }
        if self.memory_limit.is_some() && self.device != DeviceChoice::Cuda {
            return Err(PlanError::Needs {
                field: Field::MemoryLimit,
                needs: Need::Gpu,
            });
        }
        if self.max_position == Some(0) {
            return Err(PlanError::invalid(
                Field::MaxPosition,
                0,
                "must be at least 1",
            ));
        }
        if self.over_memory == OverMemory::Run && self.device != DeviceChoice::Cuda {
            return Err(PlanError::Needs {
                field: Field::OverMemory,
                needs: Need::Gpu,
            });
        }
        self.check_engine()
    }

    /// The engine and its settings.
    fn check_engine(&self) -> Result<(), PlanError> {
        if !self.engine.is_measured() {
            return Err(PlanError::invalid(
                Field::Engine,
                self.engine.as_str(),
                "is estimated only: bench measures candle-eager, candle-chunked and \
                 candle-quantized",
            ));
        }
        if let Some(q) = self.quant {
            if self.engine != EngineProfile::CandleQuantized {
                return Err(PlanError::Needs {
                    field: Field::Quant,
                    needs: Need::Quantized,
                });
            }
            if self.weights != WeightsChoice::Synthetic {
                return Err(PlanError::invalid(
                    Field::Quant,
                    q.as_str(),
                    "is for synthetic weights: a GGUF file's weights have the types it holds",
                ));
            }
            if !GgmlType::OFFERED.contains(&q) {
                return Err(PlanError::invalid(
                    Field::Quant,
                    q.as_str(),
                    "candle-quantized's synthetic weights are q4_0, q4k or q8_0",
                ));
            }
        }
        if self.engine == EngineProfile::CandleQuantized {
            if self.dtype != DType::F32 {
                return Err(PlanError::invalid(
                    Field::Dtype,
                    self.dtype,
                    "candle-quantized computes in f32 whatever the weights (QMatMul's output, \
                     the KV cache); its weights' type is --quant",
                ));
            }
            if self.mode == Mode::Train {
                return Err(PlanError::Needs {
                    field: Field::Engine,
                    needs: Need::Inference,
                });
            }
            if let Some(&b) = self.grid.batches.iter().find(|&&b| b != 1) {
                return Err(PlanError::invalid(
                    Field::Batch,
                    b,
                    "candle-transformers 0.11's quantized_llama prefills one sequence at a \
                     time (with more, the last position's slice is not contiguous and QMatMul \
                     refuses it: huggingface/candle#2788); use --batch 1 (`estimate` and `fit` \
                     still answer for larger batches)",
                ));
            }
            let longest = self.grid.contexts.iter().max().copied().unwrap_or(0)
                + self.grid.decode_steps.max(1);
            if longest > QUANTIZED_MAX_POSITIONS {
                return Err(PlanError::invalid(
                    Field::Context,
                    longest,
                    format!(
                        "candle-transformers' quantized_llama has rotary tables for \
                         {QUANTIZED_MAX_POSITIONS} positions (MAX_SEQ_LEN): the longest context \
                         plus the decode steps must stay within it"
                    ),
                ));
            }
        }
        let chunked = matches!(
            self.engine,
            EngineProfile::CandleChunked | EngineProfile::CandleFlash
        );
        if chunked && self.mode == Mode::Train {
            return Err(PlanError::Needs {
                field: Field::Engine,
                needs: Need::Inference,
            });
        }
        // FlashAttention-2 has CUDA kernels only.
        if self.engine == EngineProfile::CandleFlash && self.device != DeviceChoice::Cuda {
            return Err(PlanError::Needs {
                field: Field::Engine,
                needs: Need::Gpu,
            });
        }
        let knobs = [
            (Field::PrefillChunk, self.prefill_chunk, 1),
            (Field::KvCapacity, self.kv_capacity, 2),
            (
                Field::AttentionBlock,
                self.attention_block,
                MIN_ATTENTION_BLOCK,
            ),
        ];
        for (field, value, min) in knobs {
            let Some(v) = value else { continue };
            // The flash engine has no score blocks; its chunks and cache are the chunked
            // engine's.
            let applies = self.engine == EngineProfile::CandleChunked
                || (self.engine == EngineProfile::CandleFlash && field != Field::AttentionBlock);
            if !applies {
                return Err(PlanError::Needs {
                    field,
                    needs: Need::Chunked,
                });
            }
            if !(min..=MAX_KNOB).contains(&v) {
                return Err(PlanError::invalid(
                    field,
                    v,
                    format!("must be between {min} and {MAX_KNOB}"),
                ));
            }
        }
        if let Some(block) = self.attention_block {
            if self.device == DeviceChoice::Cuda && block >= 1 << 32 {
                return Err(PlanError::invalid(
                    Field::AttentionBlock,
                    block,
                    "must stay below 2^32 elements on CUDA (candle 0.11's kernels count in u32)",
                ));
            }
        }
        if let Some(cap) = self.kv_capacity {
            let need = self.grid.contexts.iter().max().copied().unwrap_or(0)
                + self.grid.decode_steps.max(1);
            if cap < need {
                return Err(PlanError::invalid(
                    Field::KvCapacity,
                    cap,
                    format!(
                        "must hold the longest context and its decode steps ({need} positions)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The chunked engine's settings (defaults where not given).
    pub fn knobs(&self) -> Knobs {
        let d = Knobs::default();
        Knobs {
            prefill_chunk: self.prefill_chunk.unwrap_or(d.prefill_chunk),
            kv_capacity: self.kv_capacity,
            attention_block: self.attention_block.unwrap_or(d.attention_block),
            quant: self.quant.unwrap_or(d.quant),
            ..d
        }
    }

    /// The workloads this plan measures on `spec` ([`Grid::workloads_for`] its mode).
    ///
    /// # Errors
    /// [`PlanError`] for a grid the model cannot run.
    pub fn workloads(
        &self,
        spec: &crate::spec::ModelSpec,
    ) -> Result<Vec<crate::estimate::Workload>, PlanError> {
        self.grid.workloads_for(spec, self.mode)
    }

    /// What was assumed about the requested contexts (inference only: a training step's
    /// context is taken as given).
    pub fn assumptions(&self, spec: &crate::spec::ModelSpec) -> Vec<String> {
        match self.mode {
            Mode::Inference => self.grid.assumptions(spec),
            Mode::Train => Vec::new(),
        }
    }

    /// Records the sweep stores for its grid (the boundary search adds more).
    pub fn records_planned(&self) -> u64 {
        self.grid.points() * self.mode.phases_per_point()
    }

    /// The `vramprobe bench` arguments that make this plan (the daemon runs each sweep in a
    /// child process): parsed back by the command line, they give this plan again.
    pub fn to_args(&self) -> Vec<String> {
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let mut a = vec!["bench".to_string()];
        if let Some(m) = &self.model {
            a.push(format!("--model={m}"));
        }
        if let Some(r) = &self.revision {
            a.push(format!("--revision={r}"));
        }
        a.push(format!("--dtype={}", self.dtype));
        a.push(format!("--device={}", self.device.as_str()));
        a.push(format!("--mode={}", self.mode.as_str()));
        a.push(format!("--batch={}", list(&self.grid.batches)));
        a.push(format!("--context={}", list(&self.grid.contexts)));
        a.push(format!("--decode-steps={}", self.grid.decode_steps));
        if let Some(l) = &self.lora {
            a.push(format!("--lora-rank={}", l.rank));
            let t: Vec<&str> = l.targets.iter().map(|t| t.as_str()).collect();
            a.push(format!("--lora-targets={}", t.join(",")));
        }
        a.push(format!("--weights={}", self.weights.as_str()));
        a.push(format!("--seed={}", self.seed));
        a.push(format!("--nvml-hz={}", self.nvml_hz));
        if let Some(step) = self.find_boundary {
            a.push("--find-boundary".into());
            a.push(format!("--boundary-step={step}"));
        }
        if let Some(m) = self.memory_limit {
            a.push(format!("--memory-limit={m}"));
        }
        if let Some(m) = self.max_position {
            a.push(format!("--max-position={m}"));
        }
        if self.over_memory != OverMemory::default_for(self.device) {
            a.push(format!("--over-memory={}", self.over_memory));
        }
        if !self.engine.is_candle_eager() {
            a.push(format!("--engine={}", self.engine.as_str()));
        }
        for (flag, v) in [
            ("prefill-chunk", self.prefill_chunk),
            ("kv-capacity", self.kv_capacity),
            ("attention-block", self.attention_block),
        ] {
            if let Some(v) = v {
                a.push(format!("--{flag}={v}"));
            }
        }
        if let Some(q) = self.quant {
            a.push(format!("--quant={}", q.as_str()));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_is_the_main_job_and_passes() {
        let p = BenchPlan::default();
        p.check().unwrap();
        assert_eq!(p.records_planned(), 3 * 4 * 2);
        let t = BenchPlan {
            mode: Mode::Train,
            grid: Grid::default_for(Mode::Train),
            ..BenchPlan::default()
        };
        assert_eq!(t.records_planned(), 2 * 3 * 4);
    }

    /// Each combination that cannot work is refused, naming the field for both doors.
    #[test]
    fn combinations_are_checked_in_one_place() {
        let lora = Some(LoraSetup {
            rank: 8,
            targets: DEFAULT_LORA_TARGETS.to_vec(),
        });
        let cases = [
            (
                BenchPlan {
                    lora: lora.clone(),
                    ..BenchPlan::default()
                },
                "--lora-rank needs --mode train",
                "lora_rank: needs \"mode\": \"train\"",
            ),
            (
                BenchPlan {
                    find_boundary: Some(128),
                    ..BenchPlan::default()
                },
                "--find-boundary needs a GPU",
                "find_boundary: needs \"device\": \"cuda\"",
            ),
            (
                BenchPlan {
                    memory_limit: Some(1 << 30),
                    ..BenchPlan::default()
                },
                "--memory-limit needs a GPU",
                "memory_limit: needs",
            ),
            (
                BenchPlan {
                    weights: WeightsChoice::Download,
                    ..BenchPlan::default()
                },
                "--weights needs --model to be a Hugging Face model id",
                "weights: needs a Hugging Face model id",
            ),
            (
                BenchPlan {
                    model: Some("--weights=/etc".into()),
                    ..BenchPlan::default()
                },
                "--model \"--weights=/etc\": is not a model path or Hub id",
                "model: \"--weights=/etc\": is not",
            ),
            (
                BenchPlan {
                    mode: Mode::Train,
                    lora: Some(LoraSetup {
                        rank: MAX_LORA_RANK + 1,
                        targets: DEFAULT_LORA_TARGETS.to_vec(),
                    }),
                    ..BenchPlan::default()
                },
                "--lora-rank 4097: must be between 1 and 4096",
                "lora_rank: 4097:",
            ),
            (
                BenchPlan {
                    nvml_hz: 0,
                    ..BenchPlan::default()
                },
                "--nvml-hz 0:",
                "nvml_hz: 0:",
            ),
        ];
        for (plan, cli, api) in cases {
            let e = plan.check().unwrap_err();
            assert!(e.to_string().starts_with(cli), "{e}");
            assert!(e.api_message().starts_with(api), "{}", e.api_message());
        }
        let ok = BenchPlan {
            mode: Mode::Train,
            lora,
            device: DeviceChoice::Cuda,
            memory_limit: Some(1 << 30),
            ..BenchPlan::default()
        };
        ok.check().unwrap();
    }

    #[test]
    fn names_parse_back() {
        for m in [Mode::Inference, Mode::Train] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        for d in [DeviceChoice::Cpu, DeviceChoice::Cuda] {
            assert_eq!(d.as_str().parse::<DeviceChoice>(), Ok(d));
        }
        for w in ["synthetic", "download", "some/dir"] {
            assert_eq!(w.parse::<WeightsChoice>().unwrap().as_str(), w);
        }
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("finetune".parse::<Mode>().is_err());
        assert_eq!(ModelRef::of(None), ModelRef::Builtin);
        assert_eq!(
            ModelRef::of(Some("meta-llama/Meta-Llama-3-8B")),
            ModelRef::Hub("meta-llama/Meta-Llama-3-8B".into())
        );
        assert!(matches!(
            ModelRef::of(Some("models/meta-llama-3-8b-instruct")),
            ModelRef::Local(_)
        ));
    }
}
