//! The `candle-quantized` engine: candle-transformers 0.11's `quantized_llama` (GGUF-style
//! `QTensor` weights, `QMatMul`), run as it is.
//!
//! The weights come from a GGUF file, or are synthetic: every tensor of the checkpoint's
//! shapes built from seeded values and quantized with candle's own quantizer (every 2-D
//! weight to one GGML type, the norms kept in f32, as llama.cpp's `--pure`), written to an
//! in-memory GGUF and loaded through `ModelWeights::from_gguf`, the path a GGUF file takes.
//!
//! Two facts of candle's code decide how a point is run (see `estimate::candle_quantized`):
//! - the model caches one causal mask per shape for its whole life, so every point runs on a
//!   fresh clone of the loaded model (the clone shares every weight);
//! - on the CPU, the quantized matmuls that are not repacked quantize their input into a
//!   thread-local scratch that only grows, so every point runs on a fresh thread: each
//!   point then pays for its own scratch, as a fresh process would, and no more.

use super::RunError;
use crate::estimate::candle_quantized::{CpuSimd, GgmlType, QuantLayout};
use crate::spec::{ModelSpec, TensorSpec};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use std::io::Cursor;
use std::path::Path;

/// candle's GGML type for ours.
pub fn ggml_dtype(t: GgmlType) -> GgmlDType {
    match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q6K => GgmlDType::Q6K,
    }
}

/// Ours for candle's, where the estimate models it.
pub fn ggml_type(t: GgmlDType) -> Option<GgmlType> {
    Some(match t {
        GgmlDType::F32 => GgmlType::F32,
        GgmlDType::F16 => GgmlType::F16,
        GgmlDType::Q4_0 => GgmlType::Q4_0,
        GgmlDType::Q8_0 => GgmlType::Q8_0,
        GgmlDType::Q4K => GgmlType::Q4K,
        GgmlDType::Q6K => GgmlType::Q6K,
        _ => return None,
    })
}

/// The SIMD level candle 0.11's x86 quantized kernels pick on this machine
/// (`quantized::repack_x86::level`, with the same environment overrides), and whether its
/// AMX path for Q4K is usable (only ever with AVX-512 VNNI; not modelled by the estimate).
pub fn cpu_simd() -> CpuSimd {
    #[cfg(target_arch = "x86_64")]
    {
        let env = |k: &str| std::env::var(k).as_deref() == Ok("1");
        let (force_avx2, force_vnni) =
            (env("MISTRALRS_FORCE_AVX2"), env("MISTRALRS_FORCE_AVXVNNI"));
        if !force_avx2
            && !force_vnni
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vnni")
        {
            return CpuSimd::Avx512Vnni;
        }
        if !force_avx2
            && (force_vnni || is_x86_feature_detected!("avxvnni"))
            && is_x86_feature_detected!("avx2")
        {
            return CpuSimd::AvxVnni;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return CpuSimd::Avx2;
        }
        CpuSimd::Portable
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        CpuSimd::Unmodelled
    }
}

/// The GGUF name of a checkpoint tensor (llama.cpp's convention, what `from_gguf` reads).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let gguf = match name {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.weight"))
}

/// Why `quantized_llama` cannot run `spec` with `quant`, if it cannot.
///
/// # Errors
/// [`RunError::Unsupported`] for what the model has no code for (biases, q/k norms, fused
/// projections, a head_dim other than hidden / heads) and for rows the GGML type's blocks do
/// not divide.
pub fn check(spec: &ModelSpec, quant: GgmlType) -> Result<(), RunError> {
    let unsupported = |reason: String| RunError::Unsupported {
        path: spec.source.clone(),
        reason,
    };
    if let Some(what) = spec.not_llama() {
        return Err(unsupported(format!(
            "{what}, which candle-transformers' quantized_llama does not run"
        )));
    }
    if spec.fused_projections || spec.qk_norm || spec.qkv_bias || spec.o_bias || spec.mlp_bias {
        return Err(unsupported(format!(
            "model_type \"{}\" (fused projections, q/k norms or biases) cannot be run by \
             candle-transformers' quantized_llama (the other engines can still estimate it)",
            spec.model_type
        )));
    }
    if spec.head_dim * spec.num_heads != spec.hidden_size {
        return Err(unsupported(format!(
            "head_dim {} x num_attention_heads {} != hidden_size {}: quantized_llama derives \
             head_dim from the embedding length (the other engines can still estimate it)",
            spec.head_dim, spec.num_heads, spec.hidden_size
        )));
    }
    let block = quant.block_elems();
    for (what, k) in [
        ("hidden_size", spec.hidden_size),
        ("intermediate_size", spec.intermediate_size),
    ] {
        if k % block != 0 {
            return Err(unsupported(format!(
                "{what} {k} is not a multiple of {}'s block of {block} values, so its rows \
                 cannot be quantized",
                quant.as_str()
            )));
        }
    }
    Ok(())
}

/// The most positions `quantized_llama` has rotary tables for (`MAX_SEQ_LEN`, fixed).
pub const MAX_POSITIONS: u64 = MAX_SEQ_LEN as u64;

/// The metadata `from_gguf` reads, from the config.
fn metadata(spec: &ModelSpec) -> Vec<(&'static str, gguf_file::Value)> {
    use gguf_file::Value;
    let u = |v: u64| Value::U32(v as u32);
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.attention.head_count", u(spec.num_heads)),
        ("llama.attention.head_count_kv", u(spec.num_kv_heads)),
        ("llama.block_count", u(spec.num_layers)),
        ("llama.embedding_length", u(spec.hidden_size)),
        ("llama.feed_forward_length", u(spec.intermediate_size)),
        ("llama.rope.dimension_count", u(spec.head_dim)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(spec.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base", Value::F32(spec.rope_theta as f32)),
    ]
}

/// Values per chunk of a synthetic weight: each chunk of rows is generated and quantized on
/// its own core (candle's quantizer is single-threaded: Llama-3-8B in q4k took minutes on
/// one core).
const CHUNK_VALUES: usize = 1 << 20;

/// One synthetic tensor, quantized: 2-D weights to `quant` (seeded uniform values of std
/// 0.02, in chunks of rows quantized in parallel and joined, which GGML's row-major blocks
/// allow), vectors (the norms) in f32.
fn synthetic_qtensor(
    t: &TensorSpec,
    seed: u64,
    index: usize,
    quant: GgmlType,
) -> Result<QTensor, RunError> {
    use rayon::prelude::*;
    if t.shape.len() != 2 {
        let values =
            super::synthetic_tensor(t, seed, index, candle_core::DType::F32, &Device::Cpu)?;
        return Ok(QTensor::quantize(&values, GgmlDType::F32)?);
    }
    let dtype = ggml_dtype(quant);
    let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
    let step = (CHUNK_VALUES / cols.max(1)).max(1);
    let chunks: Vec<(usize, usize)> = (0..rows)
        .step_by(step)
        .map(|r0| (r0, step.min(rows - r0)))
        .collect();
    let parts = chunks
        .par_iter()
        .map(|&(r0, n)| {
            let mut rng = super::SplitMix(
                seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
                    ^ (r0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let a = 0.02 * 3f32.sqrt();
            let values: Vec<f32> = (0..n * cols).map(|_| rng.uniform(a)).collect();
            let tensor = Tensor::from_vec(values, (n, cols), &Device::Cpu)?;
            let q = QTensor::quantize(&tensor, dtype)?;
            Ok(q.data()?.into_owned())
        })
        .collect::<Result<Vec<Vec<u8>>, RunError>>()?;
    let bytes = parts.concat();
    drop(parts);
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        &bytes,
        vec![rows, cols],
        &Device::Cpu,
    )?)
}

/// An in-memory GGUF of the checkpoint's tensors, synthetic and quantized.
fn synthetic_gguf(spec: &ModelSpec, seed: u64, quant: GgmlType) -> Result<Vec<u8>, RunError> {
    let mut tensors = Vec::new();
    for (i, t) in spec.tensors().iter().enumerate() {
        let name = gguf_name(&t.name).ok_or_else(|| RunError::Unsupported {
            path: spec.source.clone(),
            reason: format!("tensor `{}` has no GGUF name", t.name),
        })?;
        tensors.push((name, synthetic_qtensor(t, seed, i, quant)?));
    }
    let meta = metadata(spec);
    let meta: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta, &refs)?;
    Ok(out.into_inner())
}

/// The GGML type of every tensor of a GGUF file, by checkpoint name, checked against the
/// config's shapes.
///
/// # Errors
/// [`RunError::BadTensor`] naming the file and the tensor that is missing, has another shape,
/// or a type the estimate does not model.
pub fn gguf_types(
    spec: &ModelSpec,
    path: &Path,
    content: &gguf_file::Content,
) -> Result<Vec<(String, GgmlType)>, RunError> {
    let bad = |name: &str, reason: String| RunError::BadTensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for t in spec.tensors() {
        let Some(name) = gguf_name(&t.name) else {
            continue;
        };
        let info = match content.tensor_infos.get(&name) {
            Some(i) => i,
            None if t.name == "lm_head.weight" => continue, // tied to token_embd
            None => return Err(bad(&name, "missing".into())),
        };
        // GGUF lists dimensions innermost first; candle reverses them into `shape`.
        let dims: Vec<u64> = info.shape.dims().iter().map(|&d| d as u64).collect();
        if dims != t.shape {
            return Err(bad(
                &name,
                format!("shape {dims:?}, config.json implies {:?}", t.shape),
            ));
        }
        let ty = ggml_type(info.ggml_dtype).ok_or_else(|| {
            bad(
                &name,
                format!(
                    "GGML type {:?} is not one the estimate models (f32, f16, q4_0, q8_0, q4k, q6k)",
                    info.ggml_dtype
                ),
            )
        })?;
        out.push((t.name.clone(), ty));
    }
    Ok(out)
}

/// candle's one-off runtime state of quantized matmuls on the CPU (its barrier thread pool),
/// created before anything is measured: a matmul of each offered type on a throwaway
/// weight.
///
/// # Errors
/// [`RunError::Candle`] if candle fails on it.
pub fn warm_runtime() -> Result<(), RunError> {
    let _ = candle_core::utils::barrier_pool();
    for t in GgmlType::OFFERED {
        let w = Tensor::zeros((16, 256), candle_core::DType::F32, &Device::Cpu)?;
        let m =
            candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize(&w, ggml_dtype(t))?)?;
        let x = Tensor::zeros((2, 256), candle_core::DType::F32, &Device::Cpu)?;
        let _ = candle_core::Module::forward(&m, &x)?;
    }
    Ok(())
}

/// The GGML type of every weight of a GGUF file, checked against the config: the file
/// must be a llama GGUF (`general.architecture`), hold every tensor of the config's shapes,
/// in types the estimate models.
///
/// # Errors
/// [`RunError::BadTensor`] naming the file, and the tensor or metadata key at fault.
pub fn gguf_layout(spec: &ModelSpec, path: &Path) -> Result<QuantLayout, RunError> {
    let bad = |name: &str, reason: String| RunError::BadTensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| bad("", e.to_string()))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| bad("", format!("not a readable GGUF file: {e}")))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    if arch != "llama" {
        return Err(RunError::BadTensor {
            path: path.to_path_buf(),
            name: String::new(),
            reason: format!(
                "metadata general.architecture is {arch:?}: candle-quantized runs \"llama\" \
                 GGUF files (candle-transformers' quantized_llama)"
            ),
        });
    }
    let types = gguf_types(spec, path, &content)?;
    Ok(QuantLayout::from_types(spec, &types, GgmlType::F32))
}

/// Write the synthetic weights of `spec` as a GGUF file (every 2-D weight in `quant`, the
/// norms in f32): what `--weights FILE.gguf` loads, for tests and for trying the engine on
/// a file without downloading one.
///
/// # Errors
/// [`RunError::BadTensor`] when the file cannot be written.
pub fn write_synthetic_gguf(
    spec: &ModelSpec,
    seed: u64,
    quant: GgmlType,
    path: &Path,
) -> Result<(), RunError> {
    let bytes = synthetic_gguf(spec, seed, quant)?;
    std::fs::write(path, bytes).map_err(|e| RunError::BadTensor {
        path: path.to_path_buf(),
        name: String::new(),
        reason: e.to_string(),
    })
}

/// Where the quantized weights come from.
pub enum Source<'a> {
    Synthetic { seed: u64, quant: GgmlType },
    File(&'a Path),
}

/// candle-transformers' quantized Llama, loaded.
pub struct QuantizedLlama {
    model: ModelWeights,
}

impl QuantizedLlama {
    /// Load through `ModelWeights::from_gguf`.
    ///
    /// # Errors
    /// [`RunError::BadTensor`] for an unreadable GGUF file; [`RunError::Candle`] otherwise.
    pub fn load(spec: &ModelSpec, source: Source<'_>, device: &Device) -> Result<Self, RunError> {
        let model = match source {
            Source::Synthetic { seed, quant } => {
                let bytes = synthetic_gguf(spec, seed, quant)?;
                let mut r = Cursor::new(bytes);
                let content = gguf_file::Content::read(&mut r)?;
                ModelWeights::from_gguf(content, &mut r, device)?
            }
            Source::File(path) => {
                let bad = |reason: String| RunError::BadTensor {
                    path: path.to_path_buf(),
                    name: String::new(),
                    reason,
                };
                gguf_layout(spec, path)?;
                let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
                let content = gguf_file::Content::read(&mut f).map_err(|e| bad(e.to_string()))?;
                ModelWeights::from_gguf(content, &mut f, device)?
            }
        };
        Ok(Self { model })
    }

    /// A model for one point: shares every weight, has no cached mask and no KV cache.
    pub fn fresh(&self) -> Self {
        let mut model = self.model.clone();
        model.clear_kv_cache();
        Self { model }
    }

    /// A forward of `tokens` (b, s) at `pos`: the last position's logits.
    pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        self.model.forward(tokens, pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelSpec {
        ModelSpec::from_path(Path::new("models/vramprobe-tiny-llama")).expect("tiny")
    }

    /// Every checkpoint tensor has the GGUF name quantized_llama reads.
    #[test]
    fn every_tensor_has_a_gguf_name() {
        let s = tiny();
        for t in s.tensors() {
            assert!(gguf_name(&t.name).is_some(), "{}", t.name);
        }
        assert_eq!(
            gguf_name("model.layers.3.mlp.down_proj.weight").as_deref(),
            Some("blk.3.ffn_down.weight")
        );
        assert_eq!(gguf_name("model.layers.0.mlp.fused.weight"), None);
    }

    /// A GGUF file written from synthetic weights reads back as the pure layout it was
    /// written in; candle's own quantizer sized each tensor as the estimate's block
    /// arithmetic says.
    #[test]
    fn a_written_gguf_reads_back_with_its_types_and_sizes() {
        let s = tiny();
        let dir = tempfile::tempdir().expect("tmp");
        for q in GgmlType::OFFERED {
            let path = dir.path().join(format!("tiny-{}.gguf", q.as_str()));
            write_synthetic_gguf(&s, 7, q, &path).expect("write");
            let layout = gguf_layout(&s, &path).expect("layout");
            let mut pure = QuantLayout::pure(&s, q);
            pure.layers = vec![pure.layers[0]; s.num_layers as usize];
            assert_eq!(layout, pure, "{}", q.as_str());
            let mut f = std::fs::File::open(&path).expect("open");
            let content = gguf_file::Content::read(&mut f).expect("read");
            for t in s.tensors() {
                let name = gguf_name(&t.name).expect("name");
                let qt = content.tensor(&mut f, &name, &Device::Cpu).expect("tensor");
                let elems = t.numel();
                let want = if t.shape.len() == 2 {
                    q.bytes(elems)
                } else {
                    elems * 4
                };
                assert_eq!(qt.storage_size_in_bytes() as u64, want, "{name}");
            }
        }
    }

    /// A GGUF whose tensors do not match config.json is named, with the tensor.
    #[test]
    fn a_gguf_of_another_model_is_refused_naming_the_tensor() {
        let s = tiny();
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tiny.gguf");
        write_synthetic_gguf(&s, 7, GgmlType::Q8_0, &path).expect("write");
        let mut other = s.clone();
        other.intermediate_size = 512;
        let e = gguf_layout(&other, &path).expect_err("another shape");
        let text = e.to_string();
        assert!(text.contains("tiny.gguf"), "{text}");
        assert!(text.contains("blk.0.ffn_gate.weight"), "{text}");
        std::fs::write(&path, b"not a gguf").expect("write");
        let e = gguf_layout(&s, &path).expect_err("garbage");
        assert!(e.to_string().contains("not a readable GGUF"), "{e}");
    }
}
