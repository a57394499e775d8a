//! The architectures beyond Llama from the command line: what `estimate` and `fit` say for
//! each shipped config, and what the engines that cannot run them refuse, exit 2.
use super::*;
use serde_json::Value;

const NEW: [&str; 8] = [
    "qwen3-8b",
    "qwen2.5-7b-instruct",
    "phi-3-mini-4k-instruct",
    "mistral-7b-v0.1",
    "gemma-2-9b-it",
    "gemma-3-1b-it",
    "mixtral-8x7b-instruct-v0.1",
    "qwen3-30b-a3b",
];

/// Every new config estimates with both transformers engines; the parameter count is the
/// config's exact one and the JSON says what is active, which layers slide, and the experts.
#[test]
fn every_new_config_estimates_with_the_transformers_engines() {
    for m in NEW.iter().chain(&["qwen1.5-moe-a2.7b"]) {
        for engine in ["transformers-sdpa", "transformers-eager"] {
            let o = vp(&format!(
                "estimate --model models/{m} --engine {engine} --context 2048 --json"
            ));
            ok(&o);
            let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
            let spec =
                vramprobe::spec::ModelSpec::from_path(std::path::Path::new(&format!("models/{m}")))
                    .unwrap();
            assert_eq!(v["params"], spec.param_count(), "{m}");
            assert_eq!(v["active_params"], spec.active_param_count(), "{m}");
            assert_eq!(v["sliding_layers"], spec.sliding_layer_count(), "{m}");
            assert_eq!(v["moe"].is_null(), spec.moe.is_none(), "{m}");
            let total = v["total_bytes"].as_u64().unwrap();
            assert!(total > v["weights_bytes"].as_u64().unwrap(), "{m} {engine}");
        }
    }
}

/// What cannot run these models refuses them by name, exit 2: the candle engines (estimate,
/// fit and bench), the training step and the vLLM plan; a dense Llama-family model with
/// a window is still fine for candle (which attends over everything).
#[test]
fn engines_without_code_for_an_architecture_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let bench = format!(
        "bench --model models/gemma-3-1b-it --context 16 --batch 1 --out {}",
        out.display()
    );
    for (cmd, says) in [
        (
            "estimate --model models/mixtral-8x7b-instruct-v0.1",
            "routes each token to 2 of 8 experts",
        ),
        (
            "fit --model models/gemma-2-9b-it --engine candle-chunked",
            "Gemma's layer",
        ),
        (
            "estimate --model models/qwen3-30b-a3b --engine transformers-sdpa --mode train",
            "--mode train",
        ),
        (
            "estimate --model models/gemma-3-1b-it --engine vllm --gpu h100-sxm",
            "does not model Gemma",
        ),
        (bench.as_str(), "Gemma's layer"),
    ] {
        let o = vp(cmd);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(says), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !out.join("points.jsonl").exists(),
        "a refused bench measured nothing"
    );
    let o = vp("estimate --model models/mistral-7b-v0.1 --context 8192");
    ok(&o);
    assert!(stdout(&o).contains("this engine attends over every token"));
}

/// vLLM's plan of a MoE model: every expert's weights on each rank of the group, the
/// fused-MoE workspaces in the profile run; Mixtral needs two H100s.
#[test]
fn vllm_plans_a_moe_model() {
    let o = vp(
        "estimate --model models/mixtral-8x7b-instruct-v0.1 --engine vllm --gpu h100-sxm --json",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let text = v.to_string();
    assert!(
        text.contains("No available memory") || text.contains("error"),
        "{text}"
    );
    let o = vp("estimate --model models/mixtral-8x7b-instruct-v0.1 --engine vllm --gpu h100-sxm --tensor-parallel-size 2 --json");
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.to_string().contains("kv_cache"), "{v}");
}

/// `fit` of a MoE model sizes every expert's weights: Mixtral in bf16 needs two 80 GB
/// cards with tensor parallelism and fits one H200.
#[test]
fn fit_sizes_every_expert() {
    let o = vp(
        "fit --model models/mixtral-8x7b-instruct-v0.1 --engine transformers-sdpa --context 4096 --json",
    );
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let gpus = v["fit"].as_array().unwrap();
    let by = |id: &str| gpus.iter().find(|g| g["gpu"] == id).unwrap().clone();
    assert_eq!(by("h100-sxm")["fits"], false);
    assert_eq!(by("h100-sxm")["tp_gpus"], 2);
    assert_eq!(by("h200")["fits"], true);
}
