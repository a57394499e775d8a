//! `bench --mode train`: real candle training steps on the CPU default model, each phase's
//! measured peak against the simulated estimate.
use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const PHASES: [&str; 4] = [
    "train_forward",
    "train_backward",
    "train_optimizer",
    "train_optimizer_first",
];

/// The bar: on the CPU default, every phase of every point within 5% (here checked
/// at 5% by `--max-error` and by reading the records back), a full fine-tune.
#[test]
fn train_default_grid_is_within_five_percent() {
    let (_dir, out, o) = bench_run("--mode train --max-error 0.05 --json");
    ok(&o);
    let stored = read_points(&out);
    let printed: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(printed, stored);
    let grid: BTreeSet<(u64, u64)> = stored
        .iter()
        .map(|p| (p["batch"].as_u64().unwrap(), p["context"].as_u64().unwrap()))
        .collect();
    assert!(grid.len() >= 6, "{grid:?}");
    assert_eq!(stored.len(), grid.len() * 4);

    let info = read_json(&out.join("run.json"));
    let weights = info["measured_weights_bytes"].as_u64().unwrap();
    assert_eq!(info["train"]["trainable_params"], 7_211_264);
    assert!(info["train"]["lora"].is_null());
    assert_eq!(info["settings"]["mode"], "train");

    let mut by_point: BTreeMap<(u64, u64), BTreeMap<String, Value>> = BTreeMap::new();
    for p in &stored {
        assert_eq!(p["status"], "ok", "{p}");
        assert_eq!(p["source"], "host_alloc");
        let (est, meas) = (
            p["estimated_bytes"].as_u64().unwrap(),
            p["measured_peak_bytes"].as_u64().unwrap(),
        );
        let err = (est as f64 - meas as f64) / meas as f64;
        assert!(err.abs() <= 0.05, "{p}");
        assert!((p["error_ratio"].as_f64().unwrap() - err).abs() < 1e-9);
        // Above the weights too: the activations and gradients, not just the weights.
        let above = p["above_weights_error_ratio"].as_f64().unwrap();
        assert!(above.abs() <= 0.05, "{p}");
        // The components add up to the estimate.
        let parts: u64 = p["estimated_components"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(parts, est);
        let key = (p["batch"].as_u64().unwrap(), p["context"].as_u64().unwrap());
        by_point
            .entry(key)
            .or_default()
            .insert(p["phase"].as_str().unwrap().to_string(), p.clone());
    }
    for ((b, s), phases) in &by_point {
        let names: Vec<&str> = phases.keys().map(String::as_str).collect();
        let mut want = PHASES.to_vec();
        want.sort();
        assert_eq!(names, want);
        let peak = |ph: &str| phases[ph]["measured_peak_bytes"].as_u64().unwrap();
        let comp = |ph: &str, c: &str| phases[ph]["estimated_components"][c].as_u64();
        // AdamW's two moments: twice the weights, resident from the first step on.
        let states = comp("train_forward", "optimizer_states").unwrap();
        assert!(
            states >= 2 * 28_845_056 && states < 2 * weights + 4096,
            "{states}"
        );
        assert!(comp("train_optimizer_first", "optimizer_states").is_some());
        // The optimizer phases hold the gradients; the forward phase holds none.
        assert!(comp("train_optimizer", "gradients").unwrap() >= 28_845_056);
        assert!(comp("train_forward", "gradients").is_none());
        // Backward keeps the forward graph and adds to it.
        assert!(peak("train_backward") > peak("train_forward"), "{b}x{s}");
        // The forward's activations grow with the tokens; the optimizer step does not.
        assert!(peak("train_forward") > weights + states);
    }
    // More tokens, more activations; the optimizer step is the same at every point.
    let fwd = |k: (u64, u64)| by_point[&k]["train_forward"]["measured_peak_bytes"].as_u64();
    assert!(fwd((2, 512)) > fwd((1, 512)) && fwd((1, 512)) > fwd((1, 128)));
    let opt: BTreeSet<u64> = by_point
        .values()
        .map(|p| p["train_optimizer"]["estimated_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(opt.len(), 1, "{opt:?}");

    // `estimate --mode train` (engine candle-eager) predicts the same phases, byte for byte.
    let o = vp("estimate --model models/vramprobe-tiny-llama --mode train --device cpu --batch 2 --context 256 --json");
    ok(&o);
    let e: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let step = &e["candle_eager_step"];
    for ph in step["phases"].as_array().unwrap() {
        let name = ph["phase"].as_str().unwrap();
        assert_eq!(
            ph["bytes"],
            by_point[&(2, 256)][name]["estimated_bytes"],
            "{name}"
        );
    }
    let measured_max = by_point[&(2, 256)]
        .values()
        .map(|p| p["measured_peak_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    let predicted = step["total_bytes"].as_u64().unwrap();
    assert!(
        (predicted as f64 / measured_max as f64 - 1.0).abs() <= 0.05,
        "{predicted} vs {measured_max}"
    );

    // The report says what the seed claims for training.
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("64-80 GB"), "{report}");
    assert!(report.contains("train_backward"));
}

/// LoRA: only the adapters train (rank 8 on q and v: 4 layers x 8 x ((256 + 256) +
/// (256 + 64)) parameters); no moments for the frozen weights.
#[test]
fn train_lora_is_within_five_percent_and_trains_only_the_adapters() {
    let (_dir, out, o) = bench_run("--mode train --lora-rank 8 --lora-targets q,v --batch 1 --context 128,256 --max-error 0.05 --json");
    ok(&o);
    let info = read_json(&out.join("run.json"));
    assert_eq!(info["train"]["trainable_params"], 4 * 8 * (512 + 320));
    assert_eq!(info["train"]["lora"]["rank"], 8);
    let stored = read_points(&out);
    assert_eq!(stored.len(), 2 * 4);
    for p in &stored {
        assert_eq!(p["status"], "ok");
        assert!(p["error_ratio"].as_f64().unwrap().abs() <= 0.05, "{p}");
        let states = p["estimated_components"]["optimizer_states"].as_u64();
        // two moments of 6,656 f32 parameters
        assert_eq!(states, Some(2 * 4 * 6_656 * 4), "{p}");
    }
    // --resume of a finished LoRA run measures nothing more and keeps the LoRA setup.
    let o = vp(&format!("bench --resume {} --json", path_str(&out)));
    ok(&o);
    assert_eq!(read_points(&out).len(), 2 * 4);
    assert_eq!(read_json(&out.join("run.json"))["train"]["lora"]["rank"], 8);
}

/// Bad combinations are refused before anything runs, naming the flag.
#[test]
fn train_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let o = vp(&format!(
        "bench --lora-rank 8 --out {}",
        path_str(&dir.path().join("a"))
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--lora-rank needs --mode train"));
    let o = vp(&format!(
        "bench --mode train --lora-rank 0 --out {}",
        path_str(&dir.path().join("b"))
    ));
    assert_eq!(o.status.code(), Some(2));
    let o = vp(&format!(
        "bench --mode train --lora-targets q,nope --lora-rank 4 --out {}",
        path_str(&dir.path().join("c"))
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}

/// Another shape of Llama: tied embeddings (Llama 3.2), no grouped-query attention, LoRA on
/// every projection. The embedding is one trainable tensor used twice (lookup and lm_head).
#[test]
fn train_tied_embeddings_without_gqa_is_within_five_percent() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/vramprobe-tiny-llama/config.json")).unwrap(),
    )
    .unwrap();
    config["tie_word_embeddings"] = true.into();
    config["num_attention_heads"] = 4.into();
    config["num_key_value_heads"] = 4.into();
    let model = dir.path().join("tied");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    for lora in [None, Some("q,k,v,o,gate,up,down")] {
        let out = dir.path().join(format!("run-{}", lora.is_some()));
        let mut args = vec![
            "bench",
            "--mode",
            "train",
            "--model",
            path_str(&model),
            "--batch",
            "2",
            "--context",
            "64,192",
            "--out",
            path_str(&out),
            "--max-error",
            "0.05",
            "--json",
        ];
        if let Some(t) = lora {
            args.extend(["--lora-rank", "4", "--lora-targets", t]);
        }
        let o = vramprobe(&args);
        ok(&o);
        let info = read_json(&out.join("run.json"));
        // tied: 8192 x 256 once, not twice
        let params = info["params"].as_u64().unwrap();
        let trainable = info["train"]["trainable_params"].as_u64().unwrap();
        if lora.is_none() {
            assert_eq!(trainable, params);
            // no lm_head; k and v are 256 x 256 instead of 256 x 64 in each of 4 layers
            assert_eq!(params, 7_211_264 - 8192 * 256 + 4 * 2 * 256 * (256 - 64));
        } else {
            // rank 4: q,k,v,o (256 + 256) each, gate, up (256 + 768), down (768 + 256)
            assert_eq!(trainable, 4 * 4 * (4 * 512 + 3 * 1024));
        }
        for p in read_points(&out) {
            assert_eq!(p["status"], "ok");
            assert!(p["error_ratio"].as_f64().unwrap().abs() <= 0.05, "{p}");
        }
    }
}
