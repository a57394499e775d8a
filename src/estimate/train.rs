//! Training memory: one optimizer step of a Llama-shaped model (forward over `batch x
//! context` tokens, loss over every position, backward, optimizer step), in steady state
//! (the optimizer's states exist from the first step on).
//!
//! ```text
//! peak = weights + optimizer states + max(
//!     forward end:  activations saved for backward + logits and loss,
//!     backward:     gradients + one layer's activations (+ the recomputed layer under full
//!                   checkpointing),
//!     step:         gradients + the optimizer's temporaries (one tensor's worth))
//! ```
//!
//! Bytes per trainable parameter by optimizer (PyTorch conventions):
//!
//! | optimizer | weights | gradients | states |
//! |---|---|---|---|
//! | `adamw` (mixed precision) | 2 (bf16) | 2 | 12: fp32 master, m, v |
//! | `adamw-bf16` (pure bf16) | 2 | 2 | 4: m, v in bf16 |
//! | `adamw-8bit` (bitsandbytes) | 2 | 2 | 2: m, v in 8 bits (+ block scales) |
//! | `sgd` (no momentum) | 2 | 2 | 0 |
//!
//! Activations saved per layer and token, derived from the Llama layer (not the GPT
//! constants of Korthikanti et al.), with `e` the dtype size: the two RMSNorm inputs and
//! outputs (`4·h·e`, plus their f32 reciprocal RMS), q, k, v and the attention output
//! (`(2h + 2·K·d)·e`, plus the log-sum-exp `4·H` of a fused attention), the MLP's gate, its
//! activation, up and product (`4·i·e`). An eager attention also keeps its softmax output,
//! `H·t·e` per token. Checkpointing: `selective` recomputes the attention core (drops the
//! softmax output of an eager attention: equal to `none` with a fused one), `full` keeps only
//! each layer's input (`h·e`) and recomputes one layer at a time during backward.
//!
//! LoRA (rank r on the target modules): the base weights are frozen (no gradients, no
//! states), the adapters (`r·(in + out)` per target) are trained in fp32 with the optimizer;
//! the inputs of frozen linear layers need not be saved, except those the adapters read.
//! QLoRA: the same with the base weights in 4 bits (`--quant int4`). ZeRO over `gpus`: stage
//! 1 shards the optimizer states, 2 also the gradients, 3 also the weights (plus two layers
//! gathered at a time).

use super::{quantized_weights_bytes, EngineProfile, Quant};
use crate::spec::{DType, ModelSpec};
use serde::Serialize;

/// Optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    Adamw,
    AdamwBf16,
    Adamw8bit,
    Sgd,
}

impl std::str::FromStr for Optimizer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adamw" => Ok(Optimizer::Adamw),
            "adamw-bf16" => Ok(Optimizer::AdamwBf16),
            "adamw-8bit" => Ok(Optimizer::Adamw8bit),
            "sgd" => Ok(Optimizer::Sgd),
            _ => Err(format!(
                "unknown optimizer \"{s}\" (adamw, adamw-bf16, adamw-8bit, sgd)"
            )),
        }
    }
}

/// Activation checkpointing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    None,
    Selective,
    Full,
}

impl std::str::FromStr for Checkpointing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Checkpointing::None),
            "selective" => Ok(Checkpointing::Selective),
            "full" => Ok(Checkpointing::Full),
            _ => Err(format!(
                "unknown checkpointing \"{s}\" (none, selective, full)"
            )),
        }
    }
}

/// A linear layer LoRA can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// The name on the command line and in results.
    pub const fn as_str(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().trim_end_matches("_proj") {
            "q" => Target::Q,
            "k" => Target::K,
            "v" => Target::V,
            "o" => Target::O,
            "gate" => Target::Gate,
            "up" => Target::Up,
            "down" => Target::Down,
            _ => {
                return Err(format!(
                    "unknown LoRA target \"{s}\" (q, k, v, o, gate, up, down)"
                ))
            }
        })
    }
}

/// LoRA adapters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lora {
    pub rank: u64,
    pub targets: Vec<Target>,
}

/// The training setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrainSetup {
    pub optimizer: Optimizer,
    pub checkpointing: Checkpointing,
    pub lora: Option<Lora>,
    /// Base weights' quantization (int4 with LoRA is QLoRA).
    pub quant: Quant,
    /// ZeRO stage (0: none) over `gpus`.
    pub zero: u8,
    pub gpus: u64,
}

/// The estimate of one training step, per GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrainEstimate {
    pub trainable_params: u64,
    pub weights_bytes: u64,
    pub gradients_bytes: u64,
    pub optimizer_states_bytes: u64,
    /// Saved for backward at the end of the forward pass.
    pub activations_bytes: u64,
    /// Logits of every position (model dtype), their f32 copy for the loss, its gradient.
    pub logits_bytes: u64,
    pub forward_peak_bytes: u64,
    pub backward_peak_bytes: u64,
    pub step_peak_bytes: u64,
}

impl TrainEstimate {
    pub fn total_bytes(&self) -> u64 {
        self.forward_peak_bytes
            .max(self.backward_peak_bytes)
            .max(self.step_peak_bytes)
    }
}

fn lora_shape(spec: &ModelSpec, t: Target) -> (u64, u64) {
    let (h, q, kv, i) = (
        spec.hidden_size,
        spec.num_heads * spec.head_dim,
        spec.num_kv_heads * spec.head_dim,
        spec.intermediate_size,
    );
    match t {
        Target::Q => (h, q),
        Target::K | Target::V => (h, kv),
        Target::O => (q, h),
        Target::Gate | Target::Up => (h, i),
        Target::Down => (i, h),
    }
}

/// The trainable parameters, and the bytes of the adapters' weights, the gradients and the
/// optimizer's states (before any ZeRO sharding).
fn trainable_state(spec: &ModelSpec, e: u64, setup: &TrainSetup) -> (u64, u64, u64, u64) {
    match &setup.lora {
        None => {
            let p = spec.param_count();
            // (gradient bytes, state bytes) per trainable parameter
            let (g, st) = match setup.optimizer {
                Optimizer::Adamw => (e, 12),
                Optimizer::AdamwBf16 => (e, 2 * e),
                Optimizer::Adamw8bit => (e, 2),
                Optimizer::Sgd => (e, 0),
            };
            (p, 0, p * g, p * st)
        }
        Some(l) => {
            let p: u64 = l
                .targets
                .iter()
                .map(|&t| {
                    let (i, o) = lora_shape(spec, t);
                    l.rank * (i + o)
                })
                .sum::<u64>()
                * spec.num_layers;
            // adapters in fp32: 4 B weights, 4 B gradients, the optimizer's states in fp32
            let st = match setup.optimizer {
                Optimizer::Adamw | Optimizer::AdamwBf16 => 8,
                Optimizer::Adamw8bit => 2,
                Optimizer::Sgd => 0,
            };
            (p, p * 4, p * 4, p * st)
        }
    }
}

/// Activation bytes saved per layer per token for the backward pass (without eager
/// attention's scores).
fn saved_per_token(spec: &ModelSpec, e: u64, fused: bool, lora: Option<&Lora>) -> u64 {
    let (h, heads, kvh, d, inter) = (
        spec.hidden_size,
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.intermediate_size,
    );
    let targeted = |t: Target| lora.is_some_and(|l| l.targets.contains(&t));
    let full = lora.is_none();
    // the two RMSNorm inputs (the residual stream) and their f32 reciprocal RMS
    let mut per_token = 2 * h * e + 2 * 4;
    // the norm outputs are the inputs of q/k/v and gate/up: saved for weight gradients
    let qkv_input = full || targeted(Target::Q) || targeted(Target::K) || targeted(Target::V);
    let mlp_input = full || targeted(Target::Gate) || targeted(Target::Up);
    per_token += (u64::from(qkv_input) + u64::from(mlp_input)) * h * e;
    // attention: q, k, v and the output (the output is o_proj's input too)
    per_token += (2 * heads * d + 2 * kvh * d) * e;
    if fused {
        per_token += heads * 4; // log-sum-exp
    }
    // MLP: gate (SiLU's input), act and up (the product's inputs), product (down's input)
    per_token += 3 * inter * e;
    if full || targeted(Target::Down) {
        per_token += inter * e;
    }
    if let Some(l) = lora {
        // each adapter keeps its rank-r intermediate
        per_token += l.targets.len() as u64 * l.rank * e;
    }
    per_token
}

/// Estimate one training step of `batch x context` tokens.
pub fn estimate_train(
    spec: &ModelSpec,
    dtype: DType,
    engine: EngineProfile,
    batch: u64,
    context: u64,
    setup: &TrainSetup,
) -> TrainEstimate {
    let e = dtype.size_in_bytes();
    let (b, s) = (batch, context);
    let (h, heads, layers, vocab) = (
        spec.hidden_size,
        spec.num_heads,
        spec.num_layers,
        spec.vocab_size,
    );
    let gpus = setup.gpus.max(1);
    let shard = |bytes: u64, stage: u8| {
        if setup.zero >= stage {
            bytes.div_ceil(gpus)
        } else {
            bytes
        }
    };
    let base_weights = quantized_weights_bytes(spec, dtype, setup.quant);
    let (trainable, adapter_weights, grads, states) = trainable_state(spec, e, setup);
    let weights = shard(base_weights + adapter_weights, 3)
        + if setup.zero >= 3 && gpus > 1 {
            2 * base_weights / layers.max(1) // two layers gathered at a time
        } else {
            0
        };
    let grads = shard(grads, 2);
    let states = shard(states, 1);

    let fused = engine == EngineProfile::TransformersSdpa;
    let per_token = saved_per_token(spec, e, fused, setup.lora.as_ref());
    // eager attention keeps its softmax output (b·H·s·s), unless checkpointed
    let eager_scores = if fused || setup.checkpointing != Checkpointing::None {
        0
    } else {
        heads * s * e
    };
    let layer_acts = b * s * (per_token + eager_scores);
    let activations = match setup.checkpointing {
        Checkpointing::Full => layers * b * s * h * e,
        _ => layers * layer_acts,
    };
    // Logits for every position, the loss's f32 copy and log-softmax, and the gradient.
    let logits = b * s * vocab * (e + 4 + 4);
    // During backward: gradients being produced while a layer's activations live; under
    // full checkpointing the recomputed layer's activations (with its eager scores) too.
    let recomputed = match setup.checkpointing {
        Checkpointing::Full => b * s * (per_token + if fused { 0 } else { heads * s * e }),
        _ => layer_acts,
    };
    let fixed = weights + states;
    let forward_peak = fixed + activations + logits;
    let backward_peak = fixed + grads + recomputed + b * s * vocab * 4;
    // foreach AdamW: a temporary of the largest group; approximated by one layer's share
    let step_temp = grads / layers.max(1);
    let step_peak = fixed + grads + step_temp;
    TrainEstimate {
        trainable_params: trainable,
        weights_bytes: weights,
        gradients_bytes: grads,
        optimizer_states_bytes: states,
        activations_bytes: activations,
        logits_bytes: logits,
        forward_peak_bytes: forward_peak,
        backward_peak_bytes: backward_peak,
        step_peak_bytes: step_peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> ModelSpec {
        ModelSpec::from_path(std::path::Path::new("models/meta-llama-3-8b-instruct"))
            .expect("llama config")
    }

    fn setup(optimizer: Optimizer) -> TrainSetup {
        TrainSetup {
            optimizer,
            checkpointing: Checkpointing::None,
            lora: None,
            quant: Quant::None,
            zero: 0,
            gpus: 1,
        }
    }

    /// The seed's claim, "full fine-tuning of Llama-3-8B in BF16 needs 64-80 GB": that is
    /// pure-bf16 AdamW (8 bytes per parameter); mixed precision needs twice the states.
    #[test]
    fn full_fine_tune_of_llama3_8b_by_optimizer() {
        let s = llama();
        let p = s.param_count();
        let t = |o| {
            estimate_train(
                &s,
                DType::BF16,
                EngineProfile::TransformersSdpa,
                1,
                512,
                &setup(o),
            )
        };
        let mixed = t(Optimizer::Adamw);
        assert_eq!(mixed.optimizer_states_bytes, 12 * p);
        assert_eq!(mixed.gradients_bytes, 2 * p);
        assert!(mixed.total_bytes() > 128_000_000_000);
        let bf16 = t(Optimizer::AdamwBf16);
        assert_eq!(bf16.optimizer_states_bytes, 4 * p);
        let total = bf16.total_bytes();
        assert!((64_000_000_000..80_000_000_000).contains(&total), "{total}");
        assert!(t(Optimizer::Adamw8bit).total_bytes() < total);
        assert!(t(Optimizer::Sgd).total_bytes() < t(Optimizer::Adamw8bit).total_bytes());
    }

    #[test]
    fn checkpointing_lora_qlora_and_zero_each_cut_memory() {
        let s = llama();
        let base = setup(Optimizer::AdamwBf16);
        let at = |st: &TrainSetup, engine| estimate_train(&s, DType::BF16, engine, 4, 2048, st);
        let none = at(&base, EngineProfile::TransformersEager);
        let selective = at(
            &TrainSetup {
                checkpointing: Checkpointing::Selective,
                ..base.clone()
            },
            EngineProfile::TransformersEager,
        );
        let full = at(
            &TrainSetup {
                checkpointing: Checkpointing::Full,
                ..base.clone()
            },
            EngineProfile::TransformersEager,
        );
        assert!(none.activations_bytes > selective.activations_bytes);
        assert!(selective.activations_bytes > full.activations_bytes);
        // With a fused attention, selective checkpointing has nothing to drop.
        let fused_none = at(&base, EngineProfile::TransformersSdpa);
        let fused_sel = at(
            &TrainSetup {
                checkpointing: Checkpointing::Selective,
                ..base.clone()
            },
            EngineProfile::TransformersSdpa,
        );
        assert_eq!(fused_none.activations_bytes, fused_sel.activations_bytes);

        let lora = TrainSetup {
            lora: Some(Lora {
                rank: 16,
                targets: vec![Target::Q, Target::V],
            }),
            ..base.clone()
        };
        let l = at(&lora, EngineProfile::TransformersSdpa);
        // q: 16 x (4096 + 4096), v: 16 x (4096 + 1024), 32 layers
        assert_eq!(l.trainable_params, 32 * 16 * (8192 + 5120));
        // Gradients and states shrink to the adapters' (under 1%); the frozen linears'
        // inputs need not be saved, so activations shrink too.
        assert!(
            (l.gradients_bytes + l.optimizer_states_bytes) * 100
                < fused_none.gradients_bytes + fused_none.optimizer_states_bytes
        );
        assert!(l.activations_bytes < fused_none.activations_bytes);
        assert!(l.total_bytes() < fused_none.total_bytes());
        let qlora = at(
            &TrainSetup {
                quant: Quant::Int4,
                ..lora.clone()
            },
            EngineProfile::TransformersSdpa,
        );
        assert!(qlora.weights_bytes < l.weights_bytes / 2);

        let zero = |stage| {
            at(
                &TrainSetup {
                    zero: stage,
                    gpus: 8,
                    ..base.clone()
                },
                EngineProfile::TransformersSdpa,
            )
            .total_bytes()
        };
        assert!(zero(1) < fused_none.total_bytes());
        // Sharding the gradients helps only where they are part of the peak: here the end
        // of the forward pass (activations, no gradients yet) is the peak.
        assert!(zero(2) <= zero(1));
        assert!(zero(3) < zero(2));
    }
}
