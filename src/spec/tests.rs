use super::*;

fn spec_of(json: &str) -> Result<ModelSpec, SpecError> {
    ModelSpec::from_json_str(json, Path::new("test/config.json"))
}

const LLAMA3_8B: &str = include_str!("../../models/meta-llama-3-8b-instruct/config.json");
const TINY: &str = include_str!("../../models/vramprobe-tiny-llama/config.json");

#[test]
fn llama3_8b_parameter_count_is_exact() {
    let s = spec_of(LLAMA3_8B).unwrap();
    assert_eq!(s.param_count(), 8_030_261_248);
    assert_eq!(s.head_dim, 128);
    assert_eq!(s.num_kv_heads, 8);
    assert!(!s.tie_word_embeddings);
    assert_eq!(s.torch_dtype, Some(DType::BF16));
    let from_tensors: u64 = s.tensors().iter().map(TensorSpec::numel).sum();
    assert_eq!(from_tensors, s.param_count());
    assert_eq!(s.tensors().len(), 32 * 9 + 3);
}

#[test]
fn closed_form_matches_tensor_inventory_for_every_variant() {
    for (tie, bias, mlp_bias, ty, head_dim) in [
        (true, false, false, "llama", None),
        (false, true, false, "llama", None),
        (false, false, true, "mistral", Some(64)),
        (true, false, false, "qwen2", None),
    ] {
        let mut json: serde_json::Value = serde_json::from_str(TINY).unwrap();
        json["tie_word_embeddings"] = tie.into();
        json["attention_bias"] = bias.into();
        json["mlp_bias"] = mlp_bias.into();
        json["model_type"] = ty.into();
        if let Some(hd) = head_dim {
            json["head_dim"] = hd.into();
        }
        let s = spec_of(&json.to_string()).unwrap();
        let from_tensors: u64 = s.tensors().iter().map(TensorSpec::numel).sum();
        assert_eq!(from_tensors, s.param_count(), "{ty} tie={tie} bias={bias}");
    }
}

#[test]
fn tied_embeddings_drop_lm_head() {
    let mut json: serde_json::Value = serde_json::from_str(TINY).unwrap();
    let untied = spec_of(&json.to_string()).unwrap();
    json["tie_word_embeddings"] = true.into();
    let tied = spec_of(&json.to_string()).unwrap();
    assert_eq!(
        untied.param_count() - tied.param_count(),
        untied.vocab_size * untied.hidden_size
    );
}

#[test]
fn qwen2_has_qkv_bias_only() {
    // Qwen2-0.5B: 494,032,768 parameters (hidden 896, 24 layers, 14 heads, 2 KV heads,
    // intermediate 4864, vocab 151936, tied embeddings).
    let json = r#"{"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,
        "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
        "vocab_size":151936,"max_position_embeddings":32768,"tie_word_embeddings":true}"#;
    let s = spec_of(json).unwrap();
    assert!(s.qkv_bias && !s.o_bias);
    assert_eq!(s.param_count(), 494_032_768);
}

#[test]
fn qwen3_adds_per_head_q_and_k_norms() {
    // Qwen3's model cards state each model's parameters with and without the embeddings:
    // 0.6B / 0.44B (tied), 8.2B / 6.95B, 32.8B / 31.2B.
    let qwen3 = |hidden: u64, inter: u64, layers: u64, heads: u64, tied: bool| {
        spec_of(&format!(
            r#"{{"model_type":"qwen3","hidden_size":{hidden},"intermediate_size":{inter},
            "num_hidden_layers":{layers},"num_attention_heads":{heads},"num_key_value_heads":8,
            "head_dim":128,"vocab_size":151936,"max_position_embeddings":40960,
            "tie_word_embeddings":{tied},"attention_bias":false}}"#
        ))
        .unwrap()
    };
    let billions = |n: u64, digits: usize| format!("{:.*}", digits, n as f64 / 1e9);
    for (s, total, non_embedding) in [
        (qwen3(1024, 3072, 28, 16, true), ("0.6", 1), ("0.44", 2)),
        (qwen3(4096, 12288, 36, 32, false), ("8.2", 1), ("6.95", 2)),
        (qwen3(5120, 25600, 64, 64, false), ("32.8", 1), ("31.2", 1)),
    ] {
        assert!(s.qk_norm && !s.qkv_bias && !s.o_bias);
        let n = s.param_count();
        let embeddings = s.vocab_size * s.hidden_size * if s.tie_word_embeddings { 1 } else { 2 };
        assert_eq!(billions(n, total.1), total.0, "{n}");
        assert_eq!(
            billions(n - embeddings, non_embedding.1),
            non_embedding.0,
            "{n}"
        );
        // The inventory names the norms and sums to the count.
        let tensors = s.tensors();
        assert!(tensors
            .iter()
            .any(|t| t.name == "model.layers.0.self_attn.q_norm.weight" && t.shape == [128]));
        assert!(tensors
            .iter()
            .any(|t| t.name == "model.layers.0.self_attn.k_norm.weight"));
        assert_eq!(
            tensors
                .iter()
                .map(|t| t.shape.iter().product::<u64>())
                .sum::<u64>(),
            n
        );
    }
    // Exactly: 2 x head_dim more per layer than the same shapes without the norms.
    let with = qwen3(1024, 3072, 28, 16, true);
    assert_eq!(with.param_count(), 596_049_920);
}

#[test]
fn phi3_fuses_its_projections_under_other_names() {
    // Phi-3-mini-4k-instruct: 3.8B parameters (its model card).
    let s = spec_of(
        r#"{"model_type":"phi3","hidden_size":3072,"intermediate_size":8192,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,
        "vocab_size":32064,"max_position_embeddings":4096,"sliding_window":2047,
        "tie_word_embeddings":false,"torch_dtype":"bfloat16"}"#,
    )
    .unwrap();
    assert!(s.fused_projections && !s.qk_norm && !s.qkv_bias);
    assert_eq!(s.param_count(), 3_821_079_552);
    assert_eq!(format!("{:.1}", s.param_count() as f64 / 1e9), "3.8");
    let t = s.tensors();
    let shape = |name: &str| t.iter().find(|x| x.name == name).map(|x| x.shape.clone());
    assert_eq!(
        shape("model.layers.0.self_attn.qkv_proj.weight"),
        Some(vec![9216, 3072])
    );
    assert_eq!(
        shape("model.layers.0.mlp.gate_up_proj.weight"),
        Some(vec![16384, 3072])
    );
    assert_eq!(shape("model.layers.0.self_attn.q_proj.weight"), None);
    assert_eq!(shape("model.layers.0.mlp.gate_proj.weight"), None);
    assert_eq!(
        t.iter()
            .map(|x| x.shape.iter().product::<u64>())
            .sum::<u64>(),
        s.param_count()
    );
}

#[test]
fn missing_field_is_named() {
    let err = spec_of(r#"{"model_type":"llama","hidden_size":64}"#).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("test/config.json"), "{msg}");
    assert!(msg.contains("intermediate_size"), "{msg}");
    assert_eq!(err.kind(), "missing_field");
}

#[test]
fn nonsense_sizes_are_rejected_with_value() {
    let mut json: serde_json::Value = serde_json::from_str(TINY).unwrap();
    json["hidden_size"] = (-4).into();
    let msg = spec_of(&json.to_string()).unwrap_err().to_string();
    assert!(msg.contains("`hidden_size` = -4"), "{msg}");

    let mut json: serde_json::Value = serde_json::from_str(TINY).unwrap();
    json["num_attention_heads"] = 7.into();
    let msg = spec_of(&json.to_string()).unwrap_err().to_string();
    assert!(
        msg.contains("num_attention_heads") && msg.contains('7'),
        "{msg}"
    );

    let mut json: serde_json::Value = serde_json::from_str(TINY).unwrap();
    json["num_key_value_heads"] = 3.into();
    let msg = spec_of(&json.to_string()).unwrap_err().to_string();
    assert!(msg.contains("num_key_value_heads"), "{msg}");
}

#[test]
fn unsupported_model_type_lists_supported() {
    let mut json: serde_json::Value = serde_json::from_str(TINY).unwrap();
    json["model_type"] = "gpt2".into();
    let msg = spec_of(&json.to_string()).unwrap_err().to_string();
    assert!(
        msg.contains("\"gpt2\"")
            && msg.contains("field `model_type`")
            && msg.contains(
                "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, mixtral, qwen2_moe, \
                 qwen3_moe"
            ),
        "{msg}"
    );
}

#[test]
fn malformed_json_reports_position() {
    let err = spec_of("{\"model_type\": \"llama\",\n \"hidden_size\": }").unwrap_err();
    match err {
        SpecError::Json { line, .. } => assert_eq!(line, 2),
        other => panic!("expected a JSON error, got {other:?}"),
    }
    let err = spec_of(r#"{"model_type":"llama","hidden_size":"big"}"#).unwrap_err();
    assert_eq!(err.kind(), "json");
    // A value of the wrong type names its field, not only its line and column.
    let msg = err.to_string();
    assert!(msg.contains("field `hidden_size`: invalid type"), "{msg}");
    let msg = spec_of(r#"{"model_type":"llama","rope_theta":[1]}"#)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("field `rope_theta`"), "{msg}");
}

#[test]
fn dtype_names() {
    assert_eq!("bfloat16".parse::<DType>().unwrap(), DType::BF16);
    assert_eq!("float32".parse::<DType>().unwrap(), DType::F32);
    assert_eq!("f16".parse::<DType>().unwrap().size_in_bytes(), 2);
    assert!("int3".parse::<DType>().is_err());
}

/// Every config shipped in models/ has the parameter count its publisher reports, and the
/// closed form agrees with the tensor inventory.
#[test]
fn shipped_configs_have_their_published_parameter_counts() {
    for (dir, params, kv_per_token) in [
        ("models/vramprobe-tiny-llama", 7_211_264u64, 2_048u64),
        ("models/meta-llama-3-8b-instruct", 8_030_261_248, 131_072),
        ("models/meta-llama-3-70b-instruct", 70_553_706_496, 327_680),
        ("models/llama-3.1-405b-instruct", 405_853_388_800, 516_096),
        ("models/llama-3.1-8b-instruct", 8_030_261_248, 131_072),
    ] {
        let s = ModelSpec::from_path(std::path::Path::new(dir)).expect(dir);
        assert_eq!(s.param_count(), params, "{dir}");
        let inventory: u64 = s.tensors().iter().map(|t| t.numel()).sum();
        assert_eq!(inventory, params, "{dir}");
        let dtype = s.torch_dtype.unwrap_or(crate::spec::DType::BF16);
        assert_eq!(
            crate::estimate::kv_cache_bytes_per_token(&s, dtype),
            kv_per_token,
            "{dir}"
        );
    }
}

/// Sizes beyond any model are refused naming the field, so that every count and byte size
/// derived from them stays exact in 64 bits (before: vocab 10^18 wrapped the parameter count
/// and exited 0; 10^7 layers aborted on memory).
#[test]
fn sizes_beyond_any_model_are_refused_by_field() {
    let base = std::fs::read_to_string("models/meta-llama-3-8b-instruct/config.json").unwrap();
    for (field, value) in [
        ("vocab_size", 1_000_000_000_000_000_000u64),
        ("num_hidden_layers", 10_000_000),
        ("hidden_size", 1 << 30),
        ("intermediate_size", 1 << 40),
        ("max_position_embeddings", 1 << 40),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
        v[field] = serde_json::json!(value);
        let e = ModelSpec::from_json_str(&v.to_string(), std::path::Path::new("c.json"))
            .expect_err(field);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("c.json: field `{field}`")) && text.contains("at most"),
            "{text}"
        );
    }
    // At every bound at once, the parameter count is still exact.
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    for (field, max) in MAX_FIELD {
        v[field] = serde_json::json!(max);
    }
    v["num_attention_heads"] = serde_json::json!(64);
    v["num_key_value_heads"] = serde_json::json!(64);
    v["head_dim"] = serde_json::json!(4096);
    let s = ModelSpec::from_json_str(&v.to_string(), std::path::Path::new("c.json")).unwrap();
    let (h, i, l, vocab) = (1u128 << 18, 1u128 << 20, 1u128 << 14, 1u128 << 24);
    let q = 64u128 * 4096;
    let exact = 2 * vocab * h + h + l * (h * 3 * q + q * h + 3 * h * i + 2 * h);
    assert_eq!(u128::from(s.param_count()), exact);
    assert!(exact * 4 < 1 << 63);
}

/// Every config in models/ against transformers' own build of it
/// (`scripts/transformers-count.py`, transformers 4.56.2 on PyTorch's meta device, written
/// beside each config as `transformers-count.json`): the parameter count, every tensor's
/// name and shape, the sliding window and which layers slide.
#[test]
fn every_shipped_config_matches_transformers_own_count() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir("models").unwrap() {
        let dir = entry.unwrap().path();
        let reference = dir.join("transformers-count.json");
        if !dir.join("config.json").exists() {
            continue;
        }
        let text = std::fs::read_to_string(&reference).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/transformers-count.py)",
                reference.display()
            )
        });
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = ModelSpec::from_path(&dir).unwrap();
        let name = dir.display().to_string();
        assert_eq!(s.param_count(), r["params"].as_u64().unwrap(), "{name}");
        let mut ours: Vec<(String, Vec<u64>)> =
            s.tensors().into_iter().map(|t| (t.name, t.shape)).collect();
        let mut theirs: Vec<(String, Vec<u64>)> = r["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let shape = t[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap());
                (t[0].as_str().unwrap().to_string(), shape.collect())
            })
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "{name}");
        }
        assert_eq!(s.sliding_window, r["sliding_window"].as_u64(), "{name}");
        let sliding: Vec<bool> = match r["layer_types"].as_array() {
            Some(types) => types.iter().map(|t| t == "sliding_attention").collect(),
            // No layer_types: transformers' cache slides every layer when there is a window.
            None => vec![s.sliding_window.is_some(); s.num_layers as usize],
        };
        assert_eq!(s.sliding_layers, sliding, "{name}");
        checked.push(s.model_type.clone());
    }
    for t in SUPPORTED_MODEL_TYPES {
        assert!(checked.iter().any(|c| c == t), "no shipped config of {t}");
    }
}

/// Active parameters: a token passes through top_k of each MoE layer's experts. Mixtral's
/// 12.9B and Qwen's "A2.7B" / "A3B" (3.3B activated, their model cards).
#[test]
fn active_parameters_count_the_routed_experts_only() {
    let m = ModelSpec::from_path(Path::new("models/mixtral-8x7b-instruct-v0.1")).unwrap();
    // 46,702,792,704 less 32 layers x 6 idle experts x 3 x 4096 x 14336.
    assert_eq!(m.active_param_count(), 12_879_925_248);
    // 30,532,122,624 less 48 layers x 120 idle experts x 3 x 2048 x 768; the card's
    // "3.3B activated" truncates 3.35.
    let q = ModelSpec::from_path(Path::new("models/qwen3-30b-a3b")).unwrap();
    assert_eq!(q.active_param_count(), 3_353_032_704);
    let q = ModelSpec::from_path(Path::new("models/qwen1.5-moe-a2.7b")).unwrap();
    assert_eq!(format!("{:.1}", q.active_param_count() as f64 / 1e9), "2.7");
    let dense = ModelSpec::from_path(Path::new("models/qwen3-8b")).unwrap();
    assert_eq!(dense.active_param_count(), dense.param_count());
}

#[test]
fn dense_layers_of_a_moe_model_and_bad_moe_fields() {
    let base = std::fs::read_to_string("models/qwen3-30b-a3b/config.json").unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut j: serde_json::Value = serde_json::from_str(&base).unwrap();
        j[k] = v;
        ModelSpec::from_json_str(&j.to_string(), Path::new("c.json"))
    };
    let s = with("mlp_only_layers", serde_json::json!([0, 47])).unwrap();
    let moe = s.moe.as_ref().unwrap();
    assert_eq!(moe.sparse_layer_count(), 46);
    let t = s.tensors();
    assert!(t
        .iter()
        .any(|x| x.name == "model.layers.0.mlp.gate_proj.weight" && x.shape == [6144, 2048]));
    assert!(!t
        .iter()
        .any(|x| x.name == "model.layers.0.mlp.experts.0.gate_proj.weight"));
    let inventory: u64 = t.iter().map(TensorSpec::numel).sum();
    assert_eq!(inventory, s.param_count());
    let step = with("decoder_sparse_step", serde_json::json!(2)).unwrap();
    assert_eq!(step.moe.unwrap().sparse_layer_count(), 24);
    for (field, value, says) in [
        (
            "num_experts_per_tok",
            serde_json::json!(200),
            "more than the 128 experts",
        ),
        ("mlp_only_layers", serde_json::json!([48]), "is not a layer"),
        ("num_experts", serde_json::json!(0), "positive"),
        ("num_experts", serde_json::json!(4097), "at most"),
    ] {
        let e = with(field, value).expect_err(field).to_string();
        assert!(
            e.contains(&format!("field `{field}`")) && e.contains(says),
            "{e}"
        );
    }
    // Within every field's bound but too many parameters in all: refused, not wrapped.
    let mut j: serde_json::Value = serde_json::from_str(&base).unwrap();
    j["hidden_size"] = serde_json::json!(1 << 18);
    j["moe_intermediate_size"] = serde_json::json!(1 << 20);
    j["num_experts"] = serde_json::json!(1 << 12);
    let e = ModelSpec::from_json_str(&j.to_string(), Path::new("c.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("field `num_experts`") && e.contains("parameters"),
        "{e}"
    );
}

#[test]
fn sliding_windows_follow_transformers_rules() {
    let gemma = std::fs::read_to_string("models/gemma-2-9b-it/config.json").unwrap();
    let with = |base: &str, k: &str, v: serde_json::Value| {
        let mut j: serde_json::Value = serde_json::from_str(base).unwrap();
        j[k] = v;
        ModelSpec::from_json_str(&j.to_string(), Path::new("c.json"))
    };
    let s = with(&gemma, "sliding_window", serde_json::json!(1024)).unwrap();
    assert_eq!(s.sliding_window, Some(1024));
    assert_eq!(s.sliding_layer_count(), 21);
    assert!(s.is_sliding(0) && !s.is_sliding(1));
    // Absent: the class default (4096); null: no window.
    let mut j: serde_json::Value = serde_json::from_str(&gemma).unwrap();
    j.as_object_mut().unwrap().remove("sliding_window");
    let s = ModelSpec::from_json_str(&j.to_string(), Path::new("c.json")).unwrap();
    assert_eq!(s.sliding_window, Some(4096));
    let s = with(&gemma, "sliding_window", serde_json::Value::Null).unwrap();
    assert_eq!((s.sliding_window, s.sliding_layer_count()), (None, 0));
    // Qwen's window counts only with use_sliding_window, from max_window_layers on.
    let qwen = std::fs::read_to_string("models/qwen2.5-7b-instruct/config.json").unwrap();
    assert_eq!(
        with(&qwen, "rope_theta", 1e6.into())
            .unwrap()
            .sliding_window,
        None
    );
    let mut j: serde_json::Value = serde_json::from_str(&qwen).unwrap();
    j["use_sliding_window"] = true.into();
    j["max_window_layers"] = 20.into();
    let s = ModelSpec::from_json_str(&j.to_string(), Path::new("c.json")).unwrap();
    assert_eq!(
        (s.sliding_window, s.sliding_layer_count()),
        (Some(131_072), 8)
    );
    // layer_types, when given, decides; it must name every layer with a known type.
    let types: Vec<&str> = (0..42)
        .map(|i| {
            if i < 40 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let s = with(&gemma, "layer_types", serde_json::json!(types)).unwrap();
    assert_eq!(s.sliding_layer_count(), 40);
    let e = with(&gemma, "layer_types", serde_json::json!(["full_attention"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("field `layer_types`") && e.contains("one type per layer"),
        "{e}"
    );
    let mut bad = types.clone();
    bad[3] = "chunked";
    let e = with(&gemma, "layer_types", serde_json::json!(bad))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"chunked\""), "{e}");
}
