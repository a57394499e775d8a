//! Model specification: a Hugging Face `config.json` parsed in two stages.
//!
//! [`RawConfig`] mirrors the file (every field optional, unknown keys accepted, as
//! Hugging Face configs carry many); [`ModelSpec::from_raw`] resolves it into a
//! [`ModelSpec`] with no `Option`s left, or an error naming the file, the field and the
//! value. Nothing here performs I/O beyond reading the one file.

mod dtype;

pub use dtype::DType;

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The `model_type` values whose architecture is understood: decoder-only Llama-shaped
/// transformers (RMSNorm, rotary embeddings, gated MLP, grouped-query attention);
/// Qwen3 adds an RMSNorm over each head of q and k; Phi-3 fuses q, k, v into one projection
/// and gate and up into another (the same parameters under other names); Gemma 2 and 3 add
/// norms after the attention and around the MLP, scale the embeddings, tie the output layer
/// and alternate sliding-window layers with global ones; Mixtral and the Qwen MoE models
/// replace the MLP with routed experts ([`Moe`]).
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma2",
    "gemma3_text",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
];

/// Errors from reading or resolving a `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON, or a field has the wrong JSON type.
    #[error("{path}: invalid JSON at line {line}, column {column}: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A required field is absent.
    #[error("{path}: missing field `{field}`")]
    MissingField { path: PathBuf, field: &'static str },
    /// A field is present but its value cannot describe a real model.
    #[error("{path}: field `{field}` = {value}: {reason}")]
    InvalidField {
        path: PathBuf,
        field: &'static str,
        value: String,
        reason: String,
    },
    /// The architecture is not one vramprobe models.
    #[error("{path}: field `model_type` = \"{value}\" is not supported (supported: {})", SUPPORTED_MODEL_TYPES.join(", "))]
    UnsupportedModelType { path: PathBuf, value: String },
}

impl SpecError {
    /// A stable short name for the error, for JSON output and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            SpecError::Io { .. } => "io",
            SpecError::Json { .. } => "json",
            SpecError::MissingField { .. } => "missing_field",
            SpecError::InvalidField { .. } => "invalid_field",
            SpecError::UnsupportedModelType { .. } => "unsupported_model_type",
        }
    }
}

/// `config.json` as written by Hugging Face transformers: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    pub hidden_size: Option<i64>,
    pub intermediate_size: Option<i64>,
    pub num_hidden_layers: Option<i64>,
    pub num_attention_heads: Option<i64>,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub vocab_size: Option<i64>,
    pub max_position_embeddings: Option<i64>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub torch_dtype: Option<String>,
    /// Newer transformers write `dtype` instead of `torch_dtype`.
    pub dtype: Option<String>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub rope_scaling: Option<serde_json::Value>,
    /// Qwen2-MoE's bias switch for q, k, v (default true).
    pub qkv_bias: Option<bool>,
    /// `null` (no window) and absent (the architecture's default) differ.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<i64>>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<i64>,
    pub sliding_window_pattern: Option<i64>,
    pub layer_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    /// Mixtral's expert count.
    pub num_local_experts: Option<i64>,
    /// The Qwen MoE models' expert count.
    pub num_experts: Option<i64>,
    pub num_experts_per_tok: Option<i64>,
    pub moe_intermediate_size: Option<i64>,
    pub shared_expert_intermediate_size: Option<i64>,
    pub decoder_sparse_step: Option<i64>,
    pub mlp_only_layers: Option<Vec<i64>>,
}

/// A field that may be `null`: `Some(None)` when written as null, `None` when absent.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The routed experts that replace the MLP of a mixture-of-experts layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moe {
    /// Experts per MoE layer (`num_local_experts`, `num_experts`).
    pub experts: u64,
    /// Experts each token is routed to (`num_experts_per_tok`).
    pub top_k: u64,
    /// Each expert's gated MLP width (`moe_intermediate_size`; Mixtral's
    /// `intermediate_size`).
    pub expert_intermediate: u64,
    /// The shared expert's width, run on every token beside the routed ones (Qwen2-MoE's
    /// `shared_expert_intermediate_size`; 0: none), with a one-output sigmoid gate.
    pub shared_intermediate: u64,
    /// Tensor names: Mixtral's `block_sparse_moe.experts.N.w1/w2/w3` or the Qwen models'
    /// `mlp.experts.N.gate_proj/up_proj/down_proj`.
    pub naming: MoeNaming,
    /// Per layer: whether its MLP is the experts (the Qwen models' `mlp_only_layers` and
    /// `decoder_sparse_step` keep some layers dense, of `intermediate_size`).
    pub sparse_layers: Vec<bool>,
}

/// How a checkpoint names its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MoeNaming {
    Mixtral,
    Qwen,
}

impl Moe {
    /// Parameters of one routed expert.
    pub fn expert_params(&self, hidden: u64) -> u64 {
        3 * hidden * self.expert_intermediate
    }

    /// Parameters of one MoE layer's MLP: router, experts, shared expert and its gate.
    pub fn layer_params(&self, hidden: u64) -> u64 {
        let shared = if self.shared_intermediate > 0 {
            3 * hidden * self.shared_intermediate + hidden
        } else {
            0
        };
        self.experts * hidden + self.experts * self.expert_params(hidden) + shared
    }

    /// The MoE layers.
    pub fn sparse_layer_count(&self) -> u64 {
        self.sparse_layers.iter().filter(|s| **s).count() as u64
    }
}

/// A resolved Llama-family model: every size known, every choice explicit.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelSpec {
    /// Where the spec came from (the config.json path, or a built-in name).
    pub source: String,
    /// The Hub model id (`owner/name`) when the config was fetched from the Hub.
    pub hub_repo: Option<String>,
    pub model_type: String,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    pub head_dim: u64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate, up and down projections (`mlp_bias`).
    pub mlp_bias: bool,
    /// An RMSNorm of `head_dim` weights over each head of q and of k (Qwen3).
    pub qk_norm: bool,
    /// q, k, v in one `qkv_proj` and gate, up in one `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// Norms after the attention and before and after the MLP, four per layer (Gemma 2
    /// and 3), and the embeddings scaled by `sqrt(hidden_size)`.
    pub sandwich_norms: bool,
    /// `tanh` soft-capping of the attention scores (Gemma 2: 50).
    pub attn_logit_softcapping: Option<f64>,
    /// `tanh` soft-capping of the logits (Gemma 2: 30).
    pub final_logit_softcapping: Option<f64>,
    /// The window of the sliding-window layers, in tokens.
    pub sliding_window: Option<u64>,
    /// Per layer: whether it attends over the last `sliding_window` tokens only (as
    /// transformers' `layer_types`); all false without a window.
    pub sliding_layers: Vec<bool>,
    /// Routed experts in place of the MLP (Mixtral, Qwen2-MoE, Qwen3-MoE).
    pub moe: Option<Moe>,
    /// The dtype the checkpoint is published in (`torch_dtype`), if it says.
    pub torch_dtype: Option<DType>,
    /// `rope_scaling` as written; it changes values, never sizes.
    #[serde(skip)]
    pub rope_scaling: Option<serde_json::Value>,
}

/// One weight tensor of the checkpoint: its safetensors name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u64>,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[u64]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The checks of [`ModelSpec::from_raw`], each naming the file and the field it rejects.
struct Check<'a>(&'a Path);

impl Check<'_> {
    fn invalid(&self, field: &'static str, value: String, reason: String) -> SpecError {
        SpecError::InvalidField {
            path: self.0.to_path_buf(),
            field,
            value,
            reason,
        }
    }

    fn model_type(&self, t: Option<&str>) -> Result<String, SpecError> {
        match t {
            Some(t) if SUPPORTED_MODEL_TYPES.contains(&t) => Ok(t.to_string()),
            Some(t) => Err(SpecError::UnsupportedModelType {
                path: self.0.to_path_buf(),
                value: t.to_string(),
            }),
            None => Err(SpecError::MissingField {
                path: self.0.to_path_buf(),
                field: "model_type",
            }),
        }
    }

    fn positive(&self, field: &'static str, v: Option<i64>) -> Result<u64, SpecError> {
        match v {
            None => Err(SpecError::MissingField {
                path: self.0.to_path_buf(),
                field,
            }),
            Some(v) if v <= 0 => {
                Err(self.invalid(field, v.to_string(), "must be a positive integer".into()))
            }
            Some(v) => {
                let max = max_of(field);
                if v as u64 > max {
                    return Err(self.invalid(
                        field,
                        v.to_string(),
                        format!(
                            "is beyond any model vramprobe can size (at most {max}; every \
                             byte count must stay exact in 64 bits)"
                        ),
                    ));
                }
                Ok(v as u64)
            }
        }
    }

    fn finite_positive(
        &self,
        field: &'static str,
        v: Option<f64>,
        default: f64,
    ) -> Result<f64, SpecError> {
        let v = v.unwrap_or(default);
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.invalid(field, v.to_string(), "must be a positive number".into()))
        }
    }

    /// KV heads (default: the heads) and head_dim (default: hidden / heads), checked to
    /// divide as attention needs.
    fn heads(
        &self,
        raw: &RawConfig,
        hidden_size: u64,
        num_heads: u64,
    ) -> Result<(u64, u64), SpecError> {
        let num_kv_heads = match raw.num_key_value_heads {
            None => num_heads,
            v => self.positive("num_key_value_heads", v)?,
        };
        let head_dim = match raw.head_dim {
            None if hidden_size % num_heads != 0 => {
                return Err(self.invalid(
                    "num_attention_heads",
                    num_heads.to_string(),
                    format!("does not divide hidden_size {hidden_size} and no head_dim is given"),
                ))
            }
            None => hidden_size / num_heads,
            v => self.positive("head_dim", v)?,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(self.invalid(
                "num_key_value_heads",
                num_kv_heads.to_string(),
                format!("does not divide num_attention_heads {num_heads}"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(self.invalid(
                "head_dim",
                head_dim.to_string(),
                "rotary embeddings need an even head dimension".into(),
            ));
        }
        Ok((num_kv_heads, head_dim))
    }

    /// The sliding window, as transformers resolves it: Mistral, Gemma 2 and Gemma 3
    /// default to 4096 when the field is absent; the Qwen models have one only with
    /// `use_sliding_window`; Llama has none whatever the file says.
    fn sliding_window(&self, raw: &RawConfig, model_type: &str) -> Result<Option<u64>, SpecError> {
        let default = match model_type {
            "mistral" | "gemma2" | "gemma3_text" => Some(4096),
            _ => None,
        };
        let v = match raw.sliding_window {
            None => default,
            Some(None) => None,
            Some(Some(v)) => Some(self.positive("sliding_window", Some(v))?),
        };
        Ok(match model_type {
            "llama" => None,
            "qwen2" | "qwen3" | "qwen2_moe" | "qwen3_moe" => {
                v.filter(|_| raw.use_sliding_window.unwrap_or(false))
            }
            _ => v,
        })
    }

    /// Which layers slide: `layer_types` when the file lists them, else transformers'
    /// rule for the architecture (Gemma 2: every other layer from the first; Gemma 3: all
    /// but every `sliding_window_pattern`-th; Qwen2/Qwen3: from `max_window_layers` on;
    /// the others: every layer).
    fn layer_types(
        &self,
        raw: &RawConfig,
        model_type: &str,
        layers: u64,
        window: Option<u64>,
    ) -> Result<Vec<bool>, SpecError> {
        if window.is_none() {
            return Ok(vec![false; layers as usize]);
        }
        if let Some(types) = &raw.layer_types {
            if types.len() as u64 != layers {
                return Err(self.invalid(
                    "layer_types",
                    format!("[{} entries]", types.len()),
                    format!("must name one type per layer (num_hidden_layers = {layers})"),
                ));
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(self.invalid(
                        "layer_types",
                        format!("\"{other}\""),
                        "each entry must be \"full_attention\" or \"sliding_attention\"".into(),
                    )),
                })
                .collect();
        }
        let pattern = match raw.sliding_window_pattern {
            None => 6,
            v => self.positive("sliding_window_pattern", v)?,
        };
        let first_sliding = match raw.max_window_layers {
            None => 28,
            Some(v) if v < 0 => {
                return Err(self.invalid(
                    "max_window_layers",
                    v.to_string(),
                    "must not be negative".into(),
                ))
            }
            Some(v) => v as u64,
        };
        Ok((0..layers)
            .map(|i| match model_type {
                "gemma2" => (i + 1) % 2 != 0,
                "gemma3_text" => (i + 1) % pattern != 0,
                "qwen2" | "qwen3" => i >= first_sliding,
                _ => true,
            })
            .collect())
    }

    /// The experts of Mixtral and the Qwen MoE models, with transformers' defaults for
    /// absent fields.
    fn moe(
        &self,
        raw: &RawConfig,
        model_type: &str,
        layers: u64,
        intermediate: u64,
    ) -> Result<Option<Moe>, SpecError> {
        let int = |field: &'static str, v: Option<i64>, default: u64| match v {
            None => Ok(default),
            v => self.positive(field, v),
        };
        let (experts, top_k, expert_intermediate, shared, naming) = match model_type {
            "mixtral" => (
                int("num_local_experts", raw.num_local_experts, 8)?,
                int("num_experts_per_tok", raw.num_experts_per_tok, 2)?,
                intermediate,
                0,
                MoeNaming::Mixtral,
            ),
            "qwen2_moe" => (
                int("num_experts", raw.num_experts, 60)?,
                int("num_experts_per_tok", raw.num_experts_per_tok, 4)?,
                int("moe_intermediate_size", raw.moe_intermediate_size, 1408)?,
                int(
                    "shared_expert_intermediate_size",
                    raw.shared_expert_intermediate_size,
                    5632,
                )?,
                MoeNaming::Qwen,
            ),
            "qwen3_moe" => (
                int("num_experts", raw.num_experts, 128)?,
                int("num_experts_per_tok", raw.num_experts_per_tok, 8)?,
                int("moe_intermediate_size", raw.moe_intermediate_size, 768)?,
                0,
                MoeNaming::Qwen,
            ),
            _ => return Ok(None),
        };
        if top_k > experts {
            return Err(self.invalid(
                "num_experts_per_tok",
                top_k.to_string(),
                format!("is more than the {experts} experts"),
            ));
        }
        let step = int("decoder_sparse_step", raw.decoder_sparse_step, 1)?;
        let dense: Vec<i64> = raw.mlp_only_layers.clone().unwrap_or_default();
        if let Some(bad) = dense.iter().find(|&&l| l < 0 || l as u64 >= layers) {
            return Err(self.invalid(
                "mlp_only_layers",
                bad.to_string(),
                format!("is not a layer (0 to {})", layers - 1),
            ));
        }
        let sparse_layers = (0..layers)
            .map(|l| {
                naming == MoeNaming::Mixtral
                    || (!dense.contains(&(l as i64)) && (l + 1) % step == 0)
            })
            .collect();
        Ok(Some(Moe {
            experts,
            top_k,
            expert_intermediate,
            shared_intermediate: shared,
            naming,
            sparse_layers,
        }))
    }

    /// `torch_dtype` (or, in newer configs, `dtype`), if given.
    fn dtype(&self, raw: &RawConfig) -> Result<Option<DType>, SpecError> {
        let (field, text) = match (&raw.torch_dtype, &raw.dtype) {
            (Some(t), _) => ("torch_dtype", t),
            (None, Some(t)) => ("dtype", t),
            (None, None) => return Ok(None),
        };
        text.parse::<DType>()
            .map(Some)
            .map_err(|reason| self.invalid(field, format!("\"{text}\""), reason))
    }
}

/// The first top-level field of a JSON object that on its own does not deserialize as
/// [`RawConfig`] wants (a string where a number belongs): serde's message names the type
/// and the position, not the field.
fn wrong_type_field(text: &str) -> Option<String> {
    let serde_json::Value::Object(map) = serde_json::from_str(text).ok()? else {
        return None;
    };
    map.into_iter()
        .find(|(k, v)| {
            let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
            serde_json::from_value::<RawConfig>(one).is_err()
        })
        .map(|(k, _)| k)
}

/// The largest value accepted for each size field of a config: far beyond any published
/// model (Llama-3.1-405B: hidden 16384, 126 layers, 128 heads, vocab 128256, intermediate
/// 53248), and small enough that parameter counts and byte sizes are exact in a u64 (the
/// product of the largest hidden, intermediate and layer counts times 4 bytes is below 2^63).
pub const MAX_FIELD: [(&str, u64); 14] = [
    ("hidden_size", 1 << 18),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 1 << 14),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 12),
    ("vocab_size", 1 << 24),
    ("max_position_embeddings", 1 << 24),
    ("sliding_window", 1 << 24),
    ("num_local_experts", 1 << 12),
    ("num_experts", 1 << 12),
    ("num_experts_per_tok", 1 << 12),
    ("moe_intermediate_size", 1 << 20),
    ("shared_expert_intermediate_size", 1 << 20),
];

/// The most parameters a spec may have: every byte count of a training step (weights,
/// gradients and two moments in f32) stays exact in 64 bits. A dense model at every
/// [`MAX_FIELD`] bound is below it; experts multiply the MLP, so MoE configs are checked.
pub const MAX_PARAMS: u128 = 1 << 56;

/// The bound of a size field ([`MAX_FIELD`]).
fn max_of(field: &str) -> u64 {
    MAX_FIELD
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(u64::MAX, |&(_, m)| m)
}

impl ModelSpec {
    /// Read and resolve a `config.json`, or a directory holding one.
    ///
    /// # Errors
    /// [`SpecError::Io`] when the file cannot be read, [`SpecError::Json`] when it is not
    /// valid JSON, and the errors of [`ModelSpec::from_raw`].
    pub fn from_path(path: &Path) -> Result<Self, SpecError> {
        let file = if path.is_dir() || path.extension().is_none_or(|e| e != "json") {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| SpecError::Io {
            path: file.clone(),
            source,
        })?;
        Self::from_json_str(&text, &file)
    }

    /// Parse and resolve config.json text; `path` is used in error messages.
    ///
    /// # Errors
    /// [`SpecError::Json`] and the errors of [`ModelSpec::from_raw`].
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, SpecError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| SpecError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: match wrong_type_field(text) {
                Some(field) => format!("field `{field}`: {}", strip_position(&e.to_string())),
                None => strip_position(&e.to_string()),
            },
        })?;
        Self::from_raw(raw, path)
    }

    /// Resolve a raw config: apply Hugging Face's defaults and check every size.
    ///
    /// # Errors
    /// [`SpecError::MissingField`], [`SpecError::InvalidField`] (zero or negative sizes,
    /// heads that do not divide the hidden size, KV heads that do not divide the heads) and
    /// [`SpecError::UnsupportedModelType`].
    pub fn from_raw(raw: RawConfig, path: &Path) -> Result<Self, SpecError> {
        let check = Check(path);
        let model_type = check.model_type(raw.model_type.as_deref())?;
        // In this order: the first missing or invalid field is the one named.
        let hidden_size = check.positive("hidden_size", raw.hidden_size)?;
        let intermediate_size = check.positive("intermediate_size", raw.intermediate_size)?;
        let num_layers = check.positive("num_hidden_layers", raw.num_hidden_layers)?;
        let num_heads = check.positive("num_attention_heads", raw.num_attention_heads)?;
        let vocab_size = check.positive("vocab_size", raw.vocab_size)?;
        let max_position_embeddings =
            check.positive("max_position_embeddings", raw.max_position_embeddings)?;
        let (num_kv_heads, head_dim) = check.heads(&raw, hidden_size, num_heads)?;
        // Qwen2 always has q/k/v biases and no o_proj bias (Qwen2-MoE follows `qkv_bias`,
        // default true); Llama, Mistral, Gemma and Qwen3(-MoE) follow `attention_bias`
        // (which in transformers covers o_proj too); Mixtral has none.
        let (qkv_bias, o_bias) = match model_type.as_str() {
            "qwen2" => (true, false),
            "qwen2_moe" => (raw.qkv_bias.unwrap_or(true), false),
            "mixtral" => (false, false),
            _ => {
                let b = raw.attention_bias.unwrap_or(false);
                (b, b)
            }
        };
        let gemma = matches!(model_type.as_str(), "gemma2" | "gemma3_text");
        let qk_norm = matches!(model_type.as_str(), "qwen3" | "qwen3_moe" | "gemma3_text");
        let fused_projections = model_type == "phi3";
        let sliding_window = check.sliding_window(&raw, &model_type)?;
        let sliding_layers = check.layer_types(&raw, &model_type, num_layers, sliding_window)?;
        let moe = check.moe(&raw, &model_type, num_layers, intermediate_size)?;
        if let Some(m) = &moe {
            // Experts multiply the MLP past what the field bounds keep exact: bound the
            // whole count in 128 bits first.
            let c = u128::from;
            let (h, l) = (c(hidden_size), c(num_layers));
            let attn = 2 * h * c(num_heads.max(num_kv_heads)) * c(head_dim) * 2 + 8 * h;
            let per_expert = h + 3 * h * c(m.expert_intermediate);
            let layer = attn
                + c(m.experts) * per_expert
                + 3 * h * (c(m.shared_intermediate) + c(intermediate_size))
                + h;
            let total = l * layer + 2 * c(vocab_size) * h + h;
            if total >= MAX_PARAMS {
                let field = match m.naming {
                    MoeNaming::Mixtral => "num_local_experts",
                    MoeNaming::Qwen => "num_experts",
                };
                return Err(check.invalid(
                    field,
                    m.experts.to_string(),
                    format!(
                        "gives a model of about {total} parameters, beyond any vramprobe can \
                         size (at most {MAX_PARAMS}; every byte count must stay exact in 64 bits)"
                    ),
                ));
            }
        }
        let softcap = |field: &'static str, v: Option<Option<f64>>, default: Option<f64>| match v
            .unwrap_or(default)
        {
            Some(c) if !(c.is_finite() && c > 0.0) => {
                Err(check.invalid(field, c.to_string(), "must be a positive number".into()))
            }
            c => Ok(c),
        };
        // Gemma 2's class defaults are 50 and 30; Gemma 3's are none.
        let (attn_cap, final_cap) = match model_type.as_str() {
            "gemma2" => (Some(50.0), Some(30.0)),
            _ => (None, None),
        };
        Ok(ModelSpec {
            hub_repo: None,
            source: path.display().to_string(),
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_position_embeddings,
            rope_theta: check.finite_positive("rope_theta", raw.rope_theta, 10_000.0)?,
            rms_norm_eps: check.finite_positive("rms_norm_eps", raw.rms_norm_eps, 1e-6)?,
            // Gemma's configs tie unless told otherwise (transformers' class default).
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(gemma),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm,
            fused_projections,
            sandwich_norms: gemma,
            attn_logit_softcapping: softcap(
                "attn_logit_softcapping",
                raw.attn_logit_softcapping,
                attn_cap,
            )?,
            final_logit_softcapping: softcap(
                "final_logit_softcapping",
                raw.final_logit_softcapping,
                final_cap,
            )?,
            sliding_window,
            sliding_layers,
            moe,
            torch_dtype: check.dtype(&raw)?,
            rope_scaling: raw.rope_scaling,
            model_type,
        })
    }

    /// Every weight tensor of the checkpoint, with the names its architecture's checkpoints
    /// use (Hugging Face's Llama; Phi-3's fused projections; Gemma's four norms; Mixtral's
    /// and the Qwen models' experts).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let (h, v) = (self.hidden_size, self.vocab_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut out = vec![TensorSpec::new("model.embed_tokens.weight", &[v, h])];
        for l in 0..self.num_layers {
            let pre = format!("model.layers.{l}");
            let mut push = |name: &str, shape: &[u64]| {
                out.push(TensorSpec::new(format!("{pre}.{name}"), shape));
            };
            push("input_layernorm.weight", &[h]);
            let separate = [("q_proj", q), ("k_proj", kv), ("v_proj", kv)];
            let fused = [("qkv_proj", q + 2 * kv)];
            let projections: &[(&str, u64)] = if self.fused_projections {
                &fused
            } else {
                &separate
            };
            for &(name, rows) in projections {
                push(&format!("self_attn.{name}.weight"), &[rows, h]);
                if self.qkv_bias {
                    push(&format!("self_attn.{name}.bias"), &[rows]);
                }
            }
            if self.qk_norm {
                push("self_attn.q_norm.weight", &[self.head_dim]);
                push("self_attn.k_norm.weight", &[self.head_dim]);
            }
            push("self_attn.o_proj.weight", &[h, q]);
            if self.o_bias {
                push("self_attn.o_proj.bias", &[h]);
            }
            push("post_attention_layernorm.weight", &[h]);
            if self.sandwich_norms {
                push("pre_feedforward_layernorm.weight", &[h]);
                push("post_feedforward_layernorm.weight", &[h]);
            }
            match self.moe.as_ref().filter(|m| m.sparse_layers[l as usize]) {
                Some(m) => Self::expert_tensors(m, h, &mut push),
                None => self.mlp_tensors("mlp", self.intermediate_size, &mut push),
            }
        }
        out.push(TensorSpec::new("model.norm.weight", &[h]));
        if !self.tie_word_embeddings {
            out.push(TensorSpec::new("lm_head.weight", &[v, h]));
        }
        out
    }

    /// A gated MLP of width `i` under `prefix`.
    fn mlp_tensors(&self, prefix: &str, i: u64, push: &mut impl FnMut(&str, &[u64])) {
        let h = self.hidden_size;
        let separate = [
            ("gate_proj", [i, h]),
            ("up_proj", [i, h]),
            ("down_proj", [h, i]),
        ];
        let fused = [("gate_up_proj", [2 * i, h]), ("down_proj", [h, i])];
        let mlp: &[(&str, [u64; 2])] = if self.fused_projections {
            &fused
        } else {
            &separate
        };
        for &(name, shape) in mlp {
            push(&format!("{prefix}.{name}.weight"), &shape);
            if self.mlp_bias {
                push(&format!("{prefix}.{name}.bias"), &[shape[0]]);
            }
        }
    }

    /// A MoE layer's router, experts and shared expert.
    fn expert_tensors(m: &Moe, h: u64, push: &mut impl FnMut(&str, &[u64])) {
        let i = m.expert_intermediate;
        let (block, names) = match m.naming {
            MoeNaming::Mixtral => ("block_sparse_moe", ["w1", "w3", "w2"]),
            MoeNaming::Qwen => ("mlp", ["gate_proj", "up_proj", "down_proj"]),
        };
        push(&format!("{block}.gate.weight"), &[m.experts, h]);
        for e in 0..m.experts {
            push(&format!("{block}.experts.{e}.{}.weight", names[0]), &[i, h]);
            push(&format!("{block}.experts.{e}.{}.weight", names[1]), &[i, h]);
            push(&format!("{block}.experts.{e}.{}.weight", names[2]), &[h, i]);
        }
        if m.shared_intermediate > 0 {
            let s = m.shared_intermediate;
            push(&format!("{block}.shared_expert.gate_proj.weight"), &[s, h]);
            push(&format!("{block}.shared_expert.up_proj.weight"), &[s, h]);
            push(&format!("{block}.shared_expert.down_proj.weight"), &[h, s]);
            push(&format!("{block}.shared_expert_gate.weight"), &[1, h]);
        }
    }

    /// Parameters of layer `l`'s MLP (its experts, router and shared expert in a MoE
    /// layer).
    pub fn mlp_params(&self, l: u64) -> u64 {
        let h = self.hidden_size;
        match self.moe.as_ref().filter(|m| m.sparse_layers[l as usize]) {
            Some(m) => m.layer_params(h),
            None => {
                let i = self.intermediate_size;
                3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 }
            }
        }
    }

    /// Parameters of one layer apart from its MLP: attention, its biases and norms.
    pub fn attention_params(&self) -> u64 {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut n = h * (q + 2 * kv) + q * h + if self.sandwich_norms { 4 * h } else { 2 * h };
        if self.qkv_bias {
            n += q + 2 * kv;
        }
        if self.o_bias {
            n += h;
        }
        if self.qk_norm {
            n += 2 * self.head_dim;
        }
        n
    }

    /// Exact parameter count: the sum of every tensor's elements.
    ///
    /// Closed form: `V*h*(1 + untied) + h + sum over layers of (attention + MLP)`: the
    /// attention `h*(q + 2kv) + q*h` with `q = heads*head_dim`, `kv = kv_heads*head_dim`,
    /// its biases and norms (2 per layer, Gemma 4; q/k norms `2*head_dim`); the MLP `3*h*I`
    /// (biases `2I + h`), or in a MoE layer `E*h` (router) `+ E*3*h*I_e` (experts) `+
    /// 3*h*I_s + h` (the shared expert and its gate).
    pub fn param_count(&self) -> u64 {
        let (h, v, l) = (self.hidden_size, self.vocab_size, self.num_layers);
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        let dense_mlp = 3 * h * self.intermediate_size
            + if self.mlp_bias {
                2 * self.intermediate_size + h
            } else {
                0
            };
        let mlp = match &self.moe {
            Some(m) => {
                let sparse = m.sparse_layer_count();
                sparse * m.layer_params(h) + (l - sparse) * dense_mlp
            }
            None => l * dense_mlp,
        };
        v * h + head + h + l * self.attention_params() + mlp
    }

    /// Parameters a token passes through: all of them in a dense model; in a MoE model
    /// only its `top_k` routed experts of each MoE layer (the router and shared expert
    /// always).
    pub fn active_param_count(&self) -> u64 {
        match &self.moe {
            Some(m) => {
                let idle = (m.experts - m.top_k) * m.expert_params(self.hidden_size);
                self.param_count() - m.sparse_layer_count() * idle
            }
            None => self.param_count(),
        }
    }

    /// Whether layer `l` attends over a sliding window.
    pub fn is_sliding(&self, l: u64) -> bool {
        self.sliding_layers
            .get(l as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Layers that attend over a sliding window.
    pub fn sliding_layer_count(&self) -> u64 {
        self.sliding_layers.iter().filter(|s| **s).count() as u64
    }

    /// Whether candle-transformers' llama (and vramprobe's engines built on its shapes)
    /// can run this model: the Llama family, no experts, no Gemma norms.
    pub fn is_llama_shaped(&self) -> bool {
        self.not_llama().is_none()
    }

    /// What in this model the Llama-shaped engines (the candle engines, the training
    /// step) have no code for, if anything: routed experts, or Gemma's layer.
    pub fn not_llama(&self) -> Option<String> {
        if let Some(m) = &self.moe {
            return Some(format!(
                "model_type \"{}\" routes each token to {} of {} experts",
                self.model_type, m.top_k, m.experts
            ));
        }
        if self.sandwich_norms {
            return Some(format!(
                "model_type \"{}\" has Gemma's layer (four norms, scaled embeddings, \
                 soft-capping)",
                self.model_type
            ));
        }
        None
    }

    /// The same model with `max_position_embeddings` replaced (candle's llama builds its
    /// rope tables for that many positions, so this bounds the contexts that can run).
    ///
    /// # Errors
    /// [`SpecError::InvalidField`] for fewer than 2 positions or more than 2^24.
    pub fn with_max_position(&self, positions: u64) -> Result<Self, SpecError> {
        if !(2..=1 << 24).contains(&positions) {
            return Err(SpecError::InvalidField {
                path: PathBuf::from("--max-position"),
                field: "max_position_embeddings",
                value: positions.to_string(),
                reason: "must be between 2 and 16777216".into(),
            });
        }
        let mut s = self.clone();
        s.max_position_embeddings = positions;
        Ok(s)
    }

    /// A short display name: the folder the config came from, or the source itself.
    pub fn name(&self) -> String {
        if let Some((_, name)) = self.hub_repo.as_deref().and_then(|r| r.split_once('/')) {
            return name.to_string();
        }
        let p = Path::new(&self.source);
        let base = if p.file_name().is_some_and(|f| f == "config.json") {
            p.parent().and_then(|d| d.file_name())
        } else {
            p.file_name()
        };
        base.map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.source.clone())
    }
}

/// serde_json appends " at line L column C" to its messages; the error carries both apart.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests;
