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
/// transformers (RMSNorm, rotary embeddings, gated SiLU MLP, grouped-query attention);
/// Qwen3 adds an RMSNorm over each head of q and k; Phi-3 fuses q, k, v into one projection
/// and gate and up into another (the same parameters under other names).
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi3"];

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
pub const MAX_FIELD: [(&str, u64); 8] = [
    ("hidden_size", 1 << 18),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 1 << 14),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 12),
    ("vocab_size", 1 << 24),
    ("max_position_embeddings", 1 << 24),
];

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
        // Qwen2 always has q/k/v biases and no o_proj bias; Llama and Mistral follow
        // `attention_bias` (which in transformers' Llama covers o_proj too).
        let (qkv_bias, o_bias) = match model_type.as_str() {
            "qwen2" => (true, false),
            _ => {
                let b = raw.attention_bias.unwrap_or(false);
                (b, b)
            }
        };
        let qk_norm = model_type == "qwen3";
        let fused_projections = model_type == "phi3";
        Ok(ModelSpec {
            hub_repo: None,
            source: path.display().to_string(),
            model_type,
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
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm,
            fused_projections,
            torch_dtype: check.dtype(&raw)?,
            rope_scaling: raw.rope_scaling,
        })
    }

    /// Every weight tensor of the checkpoint, with the names Hugging Face's Llama uses.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
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
                push(&format!("mlp.{name}.weight"), &shape);
                if self.mlp_bias {
                    push(&format!("mlp.{name}.bias"), &[shape[0]]);
                }
            }
        }
        out.push(TensorSpec::new("model.norm.weight", &[h]));
        if !self.tie_word_embeddings {
            out.push(TensorSpec::new("lm_head.weight", &[v, h]));
        }
        out
    }

    /// Exact parameter count: the sum of every tensor's elements.
    ///
    /// Closed form: `V*h*(1 + untied) + h + L*(h*(q + 2kv) + q*h + 3*h*I + 2*h + biases)`
    /// with `q = heads*head_dim` and `kv = kv_heads*head_dim`.
    pub fn param_count(&self) -> u64 {
        let (h, i, v, l) = (
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.num_layers,
        );
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h;
        if self.qkv_bias {
            per_layer += q + 2 * kv;
        }
        if self.o_bias {
            per_layer += h;
        }
        if self.mlp_bias {
            per_layer += 2 * i + h;
        }
        if self.qk_norm {
            per_layer += 2 * self.head_dim;
        }
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + head + h + l * per_layer
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
