//! Weights onto a device: the dtype mapping, the configs candle-transformers' Llama and the
//! chunked engine accept, seeded synthetic tensors, and local safetensors checked (headers
//! against config.json) before anything is loaded.

use super::{checkpoint, RunError};
use crate::spec::{DType, ModelSpec, TensorSpec};
use candle_core::{Device, Tensor};
use candle_transformers::models::llama::{Config, Llama3RopeConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(crate) fn candle_dtype(d: DType) -> candle_core::DType {
    match d {
        DType::F32 => candle_core::DType::F32,
        DType::F16 => candle_core::DType::F16,
        DType::BF16 => candle_core::DType::BF16,
    }
}

/// Why the chunked engine cannot run a spec, if it cannot: it has no projection biases
/// (it takes `head_dim` from the config, so any head size works).
///
/// # Errors
/// [`RunError::Unsupported`] for biases.
pub fn check_chunked(spec: &ModelSpec) -> Result<(), RunError> {
    if let Some(what) = spec.not_llama() {
        return Err(RunError::Unsupported {
            path: spec.source.clone(),
            reason: format!(
                "{what}, which candle-chunked does not run (its Llama has no code for it)"
            ),
        });
    }
    if spec.fused_projections {
        return Err(RunError::Unsupported {
            path: spec.source.clone(),
            reason: format!(
                "model_type \"{}\" fuses its projections (qkv_proj, gate_up_proj), which \
                 candle-chunked loads separately (it can still be estimated)",
                spec.model_type
            ),
        });
    }
    if spec.qk_norm {
        return Err(RunError::Unsupported {
            path: spec.source.clone(),
            reason: format!(
                "model_type \"{}\" normalises q and k per head, which candle-chunked does not \
                 (it can still be estimated)",
                spec.model_type
            ),
        });
    }
    if spec.qkv_bias || spec.o_bias || spec.mlp_bias {
        return Err(RunError::Unsupported {
            path: spec.source.clone(),
            reason: format!(
                "model_type \"{}\" with projection biases cannot be run by candle-chunked \
                 (it can still be estimated)",
                spec.model_type
            ),
        });
    }
    Ok(())
}

/// The candle-transformers config for a spec, or why candle cannot run it.
///
/// # Errors
/// [`RunError::Unsupported`] for biases (candle's llama has none) and for a `head_dim`
/// other than `hidden_size / num_attention_heads` (candle derives it).
pub fn candle_config(spec: &ModelSpec) -> Result<Config, RunError> {
    let unsupported = |reason: String| RunError::Unsupported {
        path: spec.source.clone(),
        reason,
    };
    if let Some(what) = spec.not_llama() {
        return Err(unsupported(format!(
            "{what}, which candle-transformers' llama does not run"
        )));
    }
    if spec.fused_projections {
        return Err(unsupported(format!(
            "model_type \"{}\" fuses its projections (qkv_proj, gate_up_proj), which \
             candle-transformers' llama loads separately (it can still be estimated)",
            spec.model_type
        )));
    }
    if spec.qk_norm {
        return Err(unsupported(format!(
            "model_type \"{}\" normalises q and k per head, which candle-transformers' llama \
             does not (it can still be estimated)",
            spec.model_type
        )));
    }
    if spec.qkv_bias || spec.o_bias || spec.mlp_bias {
        return Err(unsupported(format!(
            "model_type \"{}\" with projection biases cannot be run by candle-transformers' llama \
             (it can still be estimated)",
            spec.model_type
        )));
    }
    if spec.head_dim * spec.num_heads != spec.hidden_size {
        return Err(unsupported(format!(
            "head_dim {} x num_attention_heads {} != hidden_size {}: candle-transformers' llama \
             derives head_dim from hidden_size (it can still be estimated)",
            spec.head_dim, spec.num_heads, spec.hidden_size
        )));
    }
    let rope_scaling = spec
        .rope_scaling
        .clone()
        .and_then(|v| serde_json::from_value::<Llama3RopeConfig>(v).ok());
    Ok(Config {
        hidden_size: spec.hidden_size as usize,
        intermediate_size: spec.intermediate_size as usize,
        vocab_size: spec.vocab_size as usize,
        num_hidden_layers: spec.num_layers as usize,
        num_attention_heads: spec.num_heads as usize,
        num_key_value_heads: spec.num_kv_heads as usize,
        use_flash_attn: false,
        rms_norm_eps: spec.rms_norm_eps,
        rope_theta: spec.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling,
        max_position_embeddings: spec.max_position_embeddings as usize,
        tie_word_embeddings: spec.tie_word_embeddings,
    })
}

/// SplitMix64: a tiny, seedable generator, so synthetic weights are the same on every run.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-a, a).
    pub(crate) fn uniform(&mut self, a: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }
}

/// Seeded random values in f32 (std 0.02, as transformers initialises Llama; norms 1),
/// then cast to the model dtype on the device.
pub(crate) fn synthetic_tensor(
    t: &TensorSpec,
    seed: u64,
    index: usize,
    dtype: candle_core::DType,
    device: &Device,
) -> Result<Tensor, RunError> {
    let n = t.numel() as usize;
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    if !device.is_cpu() {
        // Random on the device (candle's CUDA generator takes f32 only), then cast: fast, and
        // the same bytes as a checkpoint. The device's generator is seeded once in `load`.
        let t = if t.name.ends_with("norm.weight") {
            Tensor::ones(shape, candle_core::DType::F32, device)?
        } else {
            let a = 0.02 * 3f64.sqrt();
            Tensor::rand(-a as f32, a as f32, shape, device)?
        };
        return Ok(t.to_dtype(dtype)?);
    }
    let values = if t.name.ends_with("norm.weight") {
        vec![1f32; n]
    } else {
        let mut rng = SplitMix(seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let a = 0.02 * 3f32.sqrt();
        (0..n).map(|_| rng.uniform(a)).collect()
    };
    Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}

pub(crate) fn local_tensors(
    spec: &ModelSpec,
    dir: &Path,
    dtype: candle_core::DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>, RunError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| RunError::BadTensor {
            path: dir.to_path_buf(),
            name: String::new(),
            reason: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(RunError::NoWeights {
            path: dir.to_path_buf(),
        });
    }
    // Every header read and checked first (only the headers are read): a truncated or
    // corrupt file, or a tensor that does not match config.json, is named before loading.
    let mut entries = std::collections::BTreeMap::new();
    for f in &files {
        for e in read_header(f)? {
            entries.insert(e.name.clone(), e);
        }
    }
    checkpoint::check_against(spec, &entries).map_err(|(name, reason)| RunError::BadTensor {
        path: dir.to_path_buf(),
        name,
        reason,
    })?;
    // SAFETY: the files are mapped read-only and must not be modified while we load them;
    // every tensor is copied out before the maps are dropped at the end of this function.
    #[allow(unsafe_code)]
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files)? };
    let mut out = HashMap::new();
    for t in spec.tensors() {
        let tensor = st.load(&t.name, device)?.to_dtype(dtype)?;
        out.insert(t.name.clone(), tensor);
    }
    Ok(out)
}

/// One safetensors file's header, checked against the file's length.
fn read_header(path: &Path) -> Result<Vec<checkpoint::Entry>, RunError> {
    use std::io::Read;
    let bad = |reason: String| RunError::BadTensor {
        path: path.to_path_buf(),
        name: String::new(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut prefix = Vec::with_capacity(8);
    (&mut f)
        .take(8)
        .read_to_end(&mut prefix)
        .map_err(|e| bad(e.to_string()))?;
    let n = checkpoint::header_len(&prefix, len).map_err(bad)?;
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    checkpoint::parse(&header, len - 8 - n).map_err(bad)
}
