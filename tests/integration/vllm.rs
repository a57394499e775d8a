//! `estimate --engine vllm` and `fit --engine vllm`: vLLM's memory plan from the binary.

use crate::{ok, stderr, stdout, vp};
use serde_json::Value;

fn json(cmd: &str) -> Value {
    let o = vp(cmd);
    ok(&o);
    serde_json::from_str(&stdout(&o)).expect("JSON")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn the_plan_has_every_term_and_they_add_up() {
    let v = json(
        "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu h100-sxm \
         --gpu-memory-utilization 0.95 --max-num-batched-tokens 8192 --json",
    );
    assert_eq!(v["engine"], "vllm");
    assert_eq!(v["vllm_version"], "0.11.0");
    let p = &v["vllm"];
    for k in [
        "usable_bytes",
        "before_load_bytes",
        "weights_bytes",
        "activation_peak_bytes",
        "non_torch_bytes",
        "cuda_graph_bytes",
        "kv_cache_bytes",
        "num_gpu_blocks",
        "kv_tokens",
        "max_concurrency",
    ] {
        assert!(p.get(k).is_some(), "{k} missing in {p}");
    }
    // usable = total x 0.95; the KV cache is what the other terms leave of it.
    let total = u(p, "total_bytes");
    assert_eq!(total, 85_520_809_984, "the measured H100");
    assert_eq!(u(p, "usable_bytes"), (total as f64 * 0.95) as u64);
    let non_kv = u(p, "weights_bytes") + u(p, "activation_peak_bytes") + u(p, "non_torch_bytes");
    let kv = p["kv_cache_bytes"].as_i64().unwrap();
    assert!(
        (u(p, "usable_bytes") as i64 - non_kv as i64 - kv).abs() <= 1,
        "{p}"
    );
    // Blocks of 16 tokens over 32 layers of 8 KV heads of 128, bf16: 2 MiB each.
    assert_eq!(u(p, "block_bytes"), 2 << 20);
    assert_eq!(u(p, "num_gpu_blocks"), kv as u64 / (2 << 20));
    assert_eq!(u(p, "kv_tokens"), 16 * u(p, "num_gpu_blocks"));
    let conc = p["max_concurrency"].as_f64().unwrap();
    assert_eq!(conc, u(p, "num_gpu_blocks") as f64 / (131_072.0 / 16.0));
    // vLLM's log lines carry the same numbers.
    let log: Vec<&str> = v["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(log
        .iter()
        .any(|l| l.starts_with("GPU KV cache size: ") && l.ends_with(" tokens")));
    assert!(log
        .iter()
        .any(|l| l.starts_with("Maximum concurrency for 131,072 tokens per request: ")));
}

#[test]
fn the_table_mirrors_vllms_log_lines() {
    let o = vp("estimate --model models/meta-llama-3-8b-instruct --engine vllm --gpu a100-80gb");
    ok(&o);
    let t = stdout(&o);
    for needle in [
        "vLLM 0.11.0 memory plan",
        "--max-num-batched-tokens 2048 --max-num-seqs 256",
        "Model loading took 14.",
        "torch peak memory increase:",
        "Available KV cache memory:",
        "GPU KV cache size:",
        "Maximum concurrency for 8,192 tokens per request:",
        "process",
    ] {
        assert!(t.contains(needle), "{needle} missing:\n{t}");
    }
}

#[test]
fn a_request_longer_than_the_kv_cache_gets_vllms_error_and_its_estimate() {
    let v =
        json("estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu rtx4090 --json");
    let p = &v["vllm"];
    let err = p["error"].as_str().expect("vLLM stops");
    assert!(err.starts_with("To serve at least one request"), "{err}");
    let longest = u(p, "estimated_max_model_len");
    assert!(err.contains(&format!("maximum model length is {longest}")));
    assert_eq!(u(p, "num_gpu_blocks"), 0);
    // With that length it starts.
    let v = json(&format!(
        "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu rtx4090 \
         --max-model-len {longest} --json"
    ));
    assert!(v["vllm"]["error"].is_null(), "{}", v["vllm"]);
}

#[test]
fn fit_answers_a_target_load_per_gpu() {
    let v = json(
        "fit --model models/meta-llama-3-8b-instruct --engine vllm --concurrency 32 \
         --max-model-len 8192 --json",
    );
    let fits = v["fit"].as_array().unwrap();
    assert_eq!(fits.len(), 16, "the catalogue");
    let by = |id: &str| fits.iter().find(|f| f["gpu"] == id).unwrap();
    // An H100 holds 32 requests of 8K on its own; an RTX 4090 holds a few: it needs more.
    assert_eq!(by("h100-sxm")["holds"], true);
    assert_eq!(u(&by("h100-sxm")["deployment"], "gpus"), 1);
    let r = by("rtx4090");
    assert_eq!(r["holds"], false);
    let d = &r["deployment"];
    assert!(u(d, "gpus") > 1);
    assert_eq!(
        u(d, "gpus"),
        u(d, "tensor_parallel_size") * u(d, "replicas")
    );
    assert!(u(d, "requests_per_replica") * u(d, "replicas") >= 32);
    // bf16 on a T4: vLLM refuses, no deployment.
    assert!(by("t4")["plan"]["error"]
        .as_str()
        .unwrap()
        .contains("Bfloat16"));
    assert!(by("t4")["deployment"].is_null());
    // Asking for one GPU only.
    let v = json("fit --model models/meta-llama-3-8b-instruct --engine vllm --gpu h200 --json");
    assert_eq!(v["fit"].as_array().unwrap().len(), 1);
}

#[test]
fn calibration_replaces_the_environment_terms() {
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("calibration.json");
    std::fs::write(
        &cal,
        r#"{"vllm": {"non_torch_bytes": 1073741824, "cuda_graph_bytes": 536870912}}"#,
    )
    .unwrap();
    let cmd = "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu h100-sxm --json";
    let base = json(cmd);
    let cal_str = cal.to_str().unwrap();
    let v = json(&format!("{cmd} --calibration {cal_str}"));
    assert_eq!(u(&v["vllm"], "non_torch_bytes"), 1 << 30);
    assert_eq!(u(&v["vllm"], "cuda_graph_bytes"), 1 << 29);
    let less = base["vllm"]["kv_cache_bytes"].as_i64().unwrap()
        - v["vllm"]["kv_cache_bytes"].as_i64().unwrap();
    assert_eq!(
        less,
        (1 << 30) - base["vllm"]["non_torch_bytes"].as_i64().unwrap()
    );
    assert_eq!(v["env_source"], cal_str);
    // Graphs are outside the budget in 0.11.0, and gone with --enforce-eager.
    let eager = json(&format!("{cmd} --calibration {cal_str} --enforce-eager"));
    assert_eq!(u(&eager["vllm"], "cuda_graph_bytes"), 0);
}

#[test]
fn bad_vllm_input_exits_2_naming_the_flag() {
    for (cmd, says) in [
        (
            "estimate --model models/llama-3.1-8b-instruct --gpu-memory-utilization 0.8",
            "--gpu-memory-utilization is one of vLLM's settings",
        ),
        (
            "estimate --model models/llama-3.1-8b-instruct --engine vllm",
            "give --gpu",
        ),
        (
            "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu h100-sxm --tensor-parallel-size 3",
            "divisible by tensor parallel size (3)",
        ),
        (
            "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu h100-sxm --block-size 24",
            "--block-size 24",
        ),
        (
            "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu h100-sxm --quant int4",
            "--quantization",
        ),
        (
            "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu nosuchgpu",
            "not one GPU of the catalogue",
        ),
        (
            "fit --model models/llama-3.1-8b-instruct --engine vllm --concurrency 0",
            "--concurrency 0",
        ),
        (
            "fit --model models/llama-3.1-8b-instruct --concurrency 4",
            "--concurrency is for --engine vllm",
        ),
        (
            "estimate --model models/llama-3.1-8b-instruct --engine vlm",
            "vllm",
        ),
    ] {
        let o = vp(cmd);
        assert_eq!(o.status.code(), Some(2), "{cmd}\n{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{cmd}: {}", stderr(&o));
    }
    // A calibration file with a bad field: named, exit 2.
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("c.json");
    std::fs::write(&cal, r#"{"vllm": {"non_torch": 1}}"#).unwrap();
    let o = vp(&format!(
        "estimate --model models/llama-3.1-8b-instruct --engine vllm --gpu h100-sxm --calibration {}",
        cal.to_str().unwrap()
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("vllm.non_torch"), "{}", stderr(&o));
}

#[test]
fn tensor_parallel_plans_for_70b_and_405b() {
    // Llama-3-70B in bf16 needs tensor parallelism on 80 GB cards; 405B needs 8 H200s.
    let v = json(
        "estimate --model models/meta-llama-3-70b-instruct --engine vllm --gpu h100-sxm \
         --tensor-parallel-size 4 --json",
    );
    assert!(v["vllm"]["error"].is_null(), "{}", v["vllm"]);
    assert_eq!(u(&v["vllm"], "tensor_parallel_size"), 4);
    // 80 layers x 2 KV heads per GPU x 128 x 2 x 2 bytes.
    assert_eq!(u(&v["vllm"], "kv_bytes_per_token"), 80 * 2 * 128 * 2 * 2);
    let v = json(
        "fit --model models/llama-3.1-405b-instruct --engine vllm --gpu h200 \
         --max-model-len 32768 --json",
    );
    let d = &v["fit"][0]["deployment"];
    assert_eq!(u(d, "gpus"), 8, "{d}");
    let w = json(
        "fit --model models/llama-3.1-405b-instruct --engine vllm --gpu h200 \
         --max-model-len 32768 --quantization w8a8 --json",
    );
    assert!(u(&w["fit"][0]["deployment"], "gpus") <= 8);
}
