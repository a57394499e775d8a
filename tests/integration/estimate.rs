use super::*;
use serde_json::Value;

#[test]
fn llama3_8b_json_gives_the_three_numbers() {
    let o = vp("estimate --model models/meta-llama-3-8b-instruct --json");
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["params"], 8_030_261_248u64);
    assert_eq!(v["mode"], "inference");
    assert_eq!(v["weights_bytes"], 16_060_522_496u64);
    assert_eq!(v["kv_cache_bytes_per_token"], 131_072u64);
    assert_eq!(
        v["dtype"], "bf16",
        "the config's torch_dtype is the default"
    );
    let components = v["components"].as_object().unwrap();
    let sum: u64 = components.values().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(sum, v["total_bytes"].as_u64().unwrap());
    assert_eq!(components["weights"], 16_060_522_496u64);
    // At 8184 tokens of context the KV cache alone is over 1 GiB.
    assert!(components["kv_cache"].as_u64().unwrap() >= 8184 * 131_072);
}

#[test]
fn explicit_workload_and_config_file_path() {
    let o = vp("estimate --model models/meta-llama-3-8b-instruct/config.json --dtype f32 --batch 4 --context 1024 --json");
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["weights_bytes"], 8_030_261_248u64 * 4);
    assert_eq!(v["kv_cache_bytes_per_token"], 262_144u64);
    assert_eq!(v["batch"], 4);
    assert_eq!(v["context"], 1024);
    let prefill = v["phases"]["prefill"]["components"].as_object().unwrap();
    // three f32 score tensors of batch * heads * context^2
    assert_eq!(prefill["attention_scores"], 3 * 4 * 32 * 1024 * 1024 * 4u64);
}

#[test]
fn table_labels_units() {
    let o = vp("estimate --model models/meta-llama-3-8b-instruct");
    ok(&o);
    let out = stdout(&o);
    assert!(out.contains("8,030,261,248"), "{out}");
    assert!(
        out.contains("16,060,522,496 bytes = 14.96 GiB (16.06 GB)"),
        "{out}"
    );
    assert!(out.contains("131,072 bytes per token"), "{out}");
    assert!(out.contains("attention_scores"), "{out}");
}

#[test]
fn bad_config_names_file_and_field_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    let tiny =
        std::fs::read_to_string(root().join("models/vramprobe-tiny-llama/config.json")).unwrap();
    let cases = [
        (
            tiny.replace("\"hidden_size\": 256", "\"hidden_size\": 0"),
            "`hidden_size` = 0",
        ),
        (
            tiny.replace("\"model_type\": \"llama\"", "\"model_type\": \"bert\""),
            "\"bert\"",
        ),
        (
            tiny.replace("\"num_attention_heads\": 8", "\"num_attention_heads\": 7"),
            "num_attention_heads",
        ),
        (tiny[..tiny.len() / 2].to_string(), "invalid JSON at line"),
        (
            tiny.replace("\"vocab_size\": 8192", "\"vocab_size\": \"many\""),
            "invalid JSON",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let o = vp(&format!("estimate --model {}", path_str(dir.path())));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(path_str(&cfg)), "{err}");
        assert!(err.contains(expected), "expected {expected:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_model_is_a_clear_error() {
    let o = vp("estimate --model models/no-such-model");
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(err.contains("models/no-such-model/config.json"), "{err}");
}

/// `estimate --calibration` with the calibration an H100 bench wrote predicts what NVML
/// measured in that bench (batch 2 x 4096, prefill); a broken calibration is bad input.
#[test]
fn calibration_from_a_gpu_run_predicts_its_nvml_figure() {
    let run = "reports/gpu/2026-11-26-h100-80gb/llama3-8b-grid";
    let o = vp(&format!("estimate --model models/meta-llama-3-8b-instruct --batch 2 --context 4096 --calibration {} --json", &format!("{run}/calibration.json")));
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let predicted = v["process"]["prefill"]["total_bytes"].as_u64().unwrap() as f64;
    let measured = std::fs::read_to_string(root().join(run).join("points.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|p| p["batch"] == 2 && p["context"] == 4096 && p["phase"] == "prefill")
        .unwrap()["measured"]["nvml_process"]
        .as_u64()
        .unwrap() as f64;
    let err = (predicted - measured) / measured;
    assert!(err.abs() < 0.03, "{predicted} vs {measured}: {err}");
    assert!(v["process_total_bytes"].as_u64().unwrap() >= predicted as u64);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("calibration.json");
    std::fs::write(&bad, r#"{"overheads": {"context_bytes": "lots"}}"#).unwrap();
    let o = vp(&format!(
        "estimate --model models/meta-llama-3-8b-instruct --calibration {}",
        path_str(&bad)
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("calibration.json") && e.contains("overheads"),
        "{e}"
    );
}

/// `vramprobe gpus --json`: every GPU with NVML's memory, compute capability and bf16.
#[test]
fn gpu_catalogue_as_json() {
    let o = vp("gpus --json");
    ok(&o);
    let v: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.len() >= 16);
    let h100 = v.iter().find(|g| g["id"] == "h100-sxm").unwrap();
    assert_eq!(h100["memory_bytes"], 85_520_809_984u64);
    assert_eq!(h100["compute_capability"], "9.0");
    assert_eq!(h100["bf16"], true);
    let t4 = v.iter().find(|g| g["id"] == "t4").unwrap();
    assert_eq!(t4["bf16"], false);
    for g in &v {
        assert!(g["usable_bytes"].as_u64().unwrap() < g["memory_bytes"].as_u64().unwrap());
    }
}

/// `fit` answers "which GPUs, how far, how many", and `estimate --fit` gives the same.
#[test]
fn fit_over_the_catalogue() {
    let args = [
        "--model",
        "models/meta-llama-3-70b-instruct",
        "--batch",
        "1",
        "--context",
        "4096",
        "--json",
    ];
    let o = vramprobe(&[&["fit"], &args[..]].concat());
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let fits = v["fit"].as_array().unwrap();
    let by = |id: &str| fits.iter().find(|f| f["gpu"] == id).unwrap().clone();
    // 141 GB of bf16 weights: no single 80 GB card; one 180 GB B200 does.
    assert_eq!(by("h100-sxm")["fits"], false);
    assert_eq!(by("h100-sxm")["tp_gpus"], 2);
    assert_eq!(by("b200")["fits"], true);
    assert!(by("b200")["max_batch"].as_u64().unwrap() >= 1);
    assert!(by("h200")["tp_gpus"].as_u64().unwrap() <= 2);

    let o = vramprobe(&[&["estimate", "--fit"], &args[..]].concat());
    ok(&o);
    let e: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(e["fit"], v["fit"]);
    let rule = e["rule_of_thumb"]["inference_bytes"].as_u64().unwrap();
    assert_eq!(rule, 70_553_706_496 * 2 + 2_000_000_000);
    assert_eq!(e["weights_only_bytes"], 141_107_412_992u64);

    let o = vp("fit --model models/meta-llama-3-8b-instruct --gpu a100");
    assert_eq!(o.status.code(), Some(2), "ambiguous GPU: {}", stderr(&o));
    assert!(stderr(&o).contains("a100-40gb"), "{}", stderr(&o));
    let o = vp("fit --model models/meta-llama-3-8b-instruct --gpu 4090");
    ok(&o);
    assert!(stdout(&o).contains("rtx4090"), "{}", stdout(&o));
}

/// `--engine`: the three profiles order as their attention does at long context (candle's
/// three f32 score copies > transformers' eager softmax > a fused kernel), and an unknown
/// engine is bad input.
#[test]
fn engines_differ_where_attention_does() {
    let total = |engine: &str| {
        let o = vp(&format!(
            "estimate --model models/meta-llama-3-8b-instruct --context 8184 --engine {} --json",
            engine
        ));
        ok(&o);
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        (
            v["engine"].as_str().unwrap().to_string(),
            v["total_bytes"].as_u64().unwrap(),
        )
    };
    // The names say whose engine is modelled; the old names stay as aliases.
    let by_name = |name: &str| {
        let (engine, bytes) = total(name);
        assert_eq!(engine, name);
        bytes
    };
    let (candle, hf, flash) = (
        by_name("candle-eager"),
        by_name("transformers-eager"),
        by_name("transformers-sdpa"),
    );
    assert_eq!(total("hf-eager"), ("transformers-eager".to_string(), hf));
    assert_eq!(total("flash"), ("transformers-sdpa".to_string(), flash));
    assert!(candle > hf && hf > flash, "{candle} {hf} {flash}");
    // The serving-shaped candle engine holds no score buffer over the whole context either.
    let chunked = by_name("candle-chunked");
    assert!(chunked < candle / 2, "{chunked} {candle}");
    // A fused kernel needs only weights, cache and small activations: under 18.5 GB here.
    assert!(flash < 18_500_000_000, "{flash}");
    let o = vp("estimate --model models/meta-llama-3-8b-instruct --engine tgi");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "candle-eager, candle-chunked, candle-quantized, candle-flash, \
                       transformers-eager, transformers-sdpa, vllm"
        ),
        "{}",
        stderr(&o)
    );
}

/// `--quant` and `--kv-dtype` on the command line: 70B in int4 fits one H100.
#[test]
fn quantization_flags() {
    let o = vp("fit --model models/meta-llama-3-70b-instruct --quant int4 --kv-dtype fp8 --gpu h100-sxm --json");
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["fit"][0]["fits"], true);
    let o = vp("estimate --model models/meta-llama-3-70b-instruct --quant int3");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("none, int8, int4"), "{}", stderr(&o));
}

/// `--mode train`: the seed says full fine-tuning of Llama-3-8B in BF16 needs 64-80 GB: true
/// for pure-bf16 AdamW at a short context, not for mixed precision (fp32 master and moments).
#[test]
fn training_estimates() {
    let train = |extra: &[&str]| {
        let mut args = vec![
            "estimate",
            "--model",
            "models/meta-llama-3-8b-instruct",
            "--mode",
            "train",
            "--context",
            "512",
            "--engine",
            "flash",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = vramprobe(&args);
        ok(&o);
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["mode"], "train");
        for field in [
            "params",
            "weights_bytes",
            "kv_cache_bytes_per_token",
            "components",
        ] {
            assert!(!v[field].is_null(), "{field} missing");
        }
        assert!(v["components"]["optimizer_states"].as_u64().is_some());
        v["total_bytes"].as_u64().unwrap()
    };
    let bf16 = train(&["--optimizer", "adamw-bf16"]);
    assert!((64_000_000_000..80_000_000_000).contains(&bf16), "{bf16}");
    let mixed = train(&["--optimizer", "adamw"]);
    assert!(mixed > 128_000_000_000, "{mixed}");
    let qlora = train(&[
        "--lora-rank",
        "16",
        "--lora-targets",
        "q,k,v,o",
        "--quant",
        "int4",
    ]);
    assert!(qlora < 12_000_000_000, "{qlora}");
    let zero3 = train(&["--optimizer", "adamw", "--zero", "3", "--gpus", "8"]);
    assert!(zero3 < mixed / 4, "{zero3}");
    for bad in [
        &["--optimizer", "lion"][..],
        &["--lora-targets", "mlp"],
        &["--zero", "4"],
        &["--lora-rank", "0"],
    ] {
        let mut args = vec![
            "estimate",
            "--model",
            "models/meta-llama-3-8b-instruct",
            "--mode",
            "train",
        ];
        args.extend_from_slice(bad);
        let o = vramprobe(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
    }
}

/// `fit --mode train`: a full fine-tune of Llama-3-8B with mixed-precision AdamW fits no
/// single 80 GB card, one H200 or B200, and two H100s with ZeRO-3.
#[test]
fn fit_a_training_step() {
    let o = vp("fit --model models/meta-llama-3-8b-instruct --mode train --context 2048 --engine flash --json");
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["mode"], "train");
    let fits = v["fit"].as_array().unwrap();
    let by = |id: &str| fits.iter().find(|f| f["gpu"] == id).unwrap().clone();
    assert_eq!(by("h100-sxm")["fits"], false);
    assert_eq!(by("h100-sxm")["tp_gpus"], 2);
    assert_eq!(by("h100-sxm")["parallelism"], "zero-3");
    assert_eq!(by("h200")["fits"], true);
    assert_eq!(by("b200")["fits"], true);
}

/// `--context 8192` on an 8192-position model is the sequence the cache holds: the answer
/// comes (a prompt of 8184 tokens, then 8 decode steps) and says what was assumed; `fit`
/// follows the same rule; beyond the model's positions it is still bad input.
#[test]
fn a_context_at_the_models_limit_is_answered() {
    let model = "models/meta-llama-3-8b-instruct";
    let o = vp(&format!("estimate --model {} --context 8192 --json", model));
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["context"], 8184);
    assert_eq!(v["decode_steps"], 8);
    let said = v["assumed"][0].as_str().unwrap();
    assert!(said.starts_with("context 8192:"), "{said}");
    assert!(
        said.contains("a prompt of 8184 tokens, then 8 decode steps"),
        "{said}"
    );
    let o = vp(&format!("estimate --model {} --context 8192", model));
    ok(&o);
    assert!(
        stdout(&o).starts_with("assumed: context 8192:"),
        "{}",
        stdout(&o)
    );
    let o = vp(&format!("fit --model {} --context 8192 --json", model));
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["context"], 8184);
    assert!(v["assumed"][0].as_str().unwrap().contains("8192"));
    let o = vp(&format!("estimate --model {} --context 8193", model));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("max_position_embeddings 8192"),
        "{}",
        stderr(&o)
    );
    // A context that fits with its decode steps is taken as given, with nothing assumed.
    let o = vp(&format!("estimate --model {} --context 4096 --json", model));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["context"], 4096);
    assert_eq!(v["assumed"], serde_json::json!([]));
}

/// Qwen3 (per-head q/k norms), Qwen2 (q/k/v biases) and Phi-3 (fused projections) are
/// estimated; `bench` says it cannot run them with either candle engine, before loading
/// anything, and exits 2.
#[test]
fn qwen_configs_are_estimated_and_refused_by_bench_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (model_type, reason) in [
        ("qwen3", "normalises q and k per head"),
        ("qwen2", "projection biases"),
        ("phi3", "fuses its projections"),
    ] {
        let cfg = dir.path().join(model_type);
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(
            cfg.join("config.json"),
            format!(
                r#"{{"model_type":"{model_type}","hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
                "head_dim":16,"vocab_size":256,"max_position_embeddings":512,
                "tie_word_embeddings":true,"torch_dtype":"float32"}}"#
            ),
        )
        .unwrap();
        let c = path_str(&cfg);
        let o = vp(&format!(
            "estimate --model {c} --batch 1 --context 128 --json"
        ));
        ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        // Qwen3: 2 x 16 norm weights per layer; Qwen2: biases of 64 + 2 x 32 per layer;
        // Phi-3: no more than Llama's.
        let base = 256 * 64 + 64 + 2 * (64 * 128 + 64 * 64 + 3 * 64 * 128 + 2 * 64);
        let extra = match model_type {
            "qwen3" => 2 * 2 * 16,
            "qwen2" => 2 * 128,
            _ => 0, // phi3: the same parameters, fused
        };
        assert_eq!(v["params"], base + extra, "{model_type}");
        for engine in ["candle-eager", "candle-chunked"] {
            let out = dir.path().join(format!("run-{model_type}-{engine}"));
            let o = vp(&format!(
                "bench --model {c} --batch 1 --context 128 --engine {engine} --out {}",
                path_str(&out)
            ));
            assert_eq!(o.status.code(), Some(2), "{model_type} {engine}");
            assert!(
                stderr(&o).contains(reason),
                "{model_type} {engine}: {}",
                stderr(&o)
            );
            assert!(stderr(&o).contains("it can still be estimated"));
        }
        // candle's quantized Llama has no code for them either: estimate and bench refuse.
        for cmd in ["estimate", "bench"] {
            let out = dir.path().join(format!("run-{model_type}-quantized"));
            let o = vp(&format!(
                "{cmd} --model {c} --context 128 --engine candle-quantized --quant q4_0 {}",
                if cmd == "bench" {
                    format!("--out {}", path_str(&out))
                } else {
                    String::new()
                }
            ));
            assert_eq!(
                o.status.code(),
                Some(2),
                "{model_type} {cmd}: {}",
                stderr(&o)
            );
            assert!(
                stderr(&o).contains("cannot be run by candle-transformers' quantized_llama"),
                "{model_type} {cmd}: {}",
                stderr(&o)
            );
        }
    }
}

/// Each GPU's CUDA terms come from its committed calibration (`calibrations/*.json`): a fit
/// over the catalogue fits the H100 with the H100's file and says so, the GPUs without one
/// with the default; `estimate --fit --gpu h100-sxm` names the file as its source; a
/// `--calibration` file replaces them all, and the H100's fit moves by what it changes.
#[test]
fn committed_calibrations_set_each_gpus_terms() {
    let file = "nvidia-h100-80gb-hbm3-driver-580.159.04.json";
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("calibrations").join(file)).unwrap(),
    )
    .unwrap();
    let fit = |extra: &str| -> Value {
        let o = vp(&format!(
            "fit --model models/meta-llama-3-8b-instruct --context 4096 --json {extra}"
        ));
        ok(&o);
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let on = |v: &Value, gpu: &str| -> Value {
        v["fit"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["gpu"] == gpu)
            .cloned()
            .unwrap_or_else(|| panic!("no {gpu} in {v}"))
    };
    let all = fit("");
    assert_eq!(on(&all, "h100-sxm")["calibration"], file);
    assert!(on(&all, "a100-80gb").get("calibration").is_none());
    assert!(
        all["overheads_source"].as_str().unwrap().contains(file),
        "{}",
        all["overheads_source"]
    );

    let o = vp("estimate --model models/meta-llama-3-8b-instruct --context 4096 --fit --gpu h100-sxm --json");
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["process"]["overheads_source"],
        format!("calibrations/{file} (NVIDIA H100 80GB HBM3, driver 580.159.04)")
    );
    assert_eq!(v["process"]["overheads"], committed["overheads"]);

    // A calibration given by the user wins, for every GPU.
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("calibration.json");
    let mut c = committed.clone();
    let context = c["overheads"]["context_bytes"].as_u64().unwrap();
    c["overheads"]["context_bytes"] = (context + (1 << 30)).into();
    std::fs::write(&mine, c.to_string()).unwrap();
    let theirs = fit(&format!("--calibration {}", path_str(&mine)));
    let h100 = on(&theirs, "h100-sxm");
    assert!(h100.get("calibration").is_none(), "{h100}");
    assert_eq!(
        h100["needed_bytes"].as_u64().unwrap(),
        on(&all, "h100-sxm")["needed_bytes"].as_u64().unwrap() + (1 << 30)
    );
}
