//! The serving-shaped engine, `candle-chunked`, measured on the CPU: its estimate replays
//! the allocations exactly enough to stay within 0.1% of the total and 1% of the part
//! above the weights, with its settings (chunks, score blocks) exercised.

use super::*;
use serde_json::Value;

/// Every point within 0.1% of the allocator's peak, and within 1% above the weights where
/// that part is at least 1 MiB; the run says which engine measured it.
fn assert_exact(out: &Path, expected_points: usize) -> Vec<Value> {
    let points = read_points(out);
    assert_eq!(points.len(), expected_points);
    for p in &points {
        assert_eq!(p["engine"], "candle-chunked", "{p}");
        assert_eq!(p["status"], "ok", "{p}");
        let e = p["error_ratio"].as_f64().unwrap();
        assert!(e.abs() <= 0.001, "total off by {:.3}%: {p}", e * 100.0);
        if p["measured_above_weights_bytes"].as_u64().unwrap() >= 1 << 20 {
            let a = p["above_weights_error_ratio"].as_f64().unwrap();
            assert!(
                a.abs() <= 0.01,
                "above the weights off by {:.3}%: {p}",
                a * 100.0
            );
        }
    }
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["engine"], "candle-chunked");
    assert_eq!(info["settings"]["engine"], "candle-chunked");
    points
}

/// The default settings: the KV cache is allocated whole, for the prompt and the decode
/// steps, at every point (no growth), and a prompt shorter than a chunk is one forward.
#[test]
fn chunked_engine_is_exact_in_f32() {
    let (_dir, out, o) =
        bench_run("--engine candle-chunked --batch 1,2,4 --context 128,512,1024 --decode-steps 4");
    ok(&o);
    let points = assert_exact(&out, 18);
    for p in &points {
        let (b, c) = (p["batch"].as_u64().unwrap(), p["context"].as_u64().unwrap());
        // 4 layers x K and V x batch x 2 KV heads x (context + 4) x head_dim 32 x f32
        let kv = 4 * 2 * b * 2 * (c + 4) * 32 * 4;
        assert_eq!(p["estimated_components"]["kv_cache"], kv, "{p}");
    }
}

/// Small chunks and score blocks: prompts cut in several forwards (the last one shorter),
/// attention cut along the queries and, at batch 4, along the sequences; in bf16, whose CPU
/// matmul widens the whole cache to f32.
#[test]
fn chunks_and_blocks_stay_exact_in_bf16() {
    let (_dir, out, o) = bench_run(
        "--engine candle-chunked --dtype bf16 --batch 1,4 --context 300,1000 --decode-steps 3 \
         --prefill-chunk 256 --attention-block 16384 --max-error 0.001",
    );
    ok(&o);
    assert_exact(&out, 8);
}

/// The settings belong to the chunked engine, and a cache too small for the grid is refused
/// before anything runs.
#[test]
fn chunked_settings_are_checked() {
    for (args, says) in [
        (
            "--prefill-chunk 512",
            "--prefill-chunk needs --engine candle-chunked",
        ),
        (
            "--engine candle-chunked --context 512 --kv-capacity 100",
            "--kv-capacity 100: must hold the longest context",
        ),
        ("--engine transformers-sdpa", "is estimated only"),
        (
            "--engine candle-chunked --mode train",
            "--engine needs --mode inference",
        ),
    ] {
        let (_dir, _out, o) = bench_run(args);
        assert_eq!(o.status.code(), Some(2), "{args}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args}: {}", stderr(&o));
    }
}

/// Past the model's own positions and far past what the eager engine could hold: the peak is
/// the weights, the cache and the rotary tables, plus a transient bounded by the score
/// blocks and one chunk's activations, whatever the context.
#[test]
fn long_context_peak_is_cache_plus_a_bounded_transient() {
    let block: u64 = 1 << 22;
    let (_dir, out, o) = bench_run(&format!(
        "--engine candle-chunked --max-position 8200 --batch 1 --context 8192 --decode-steps 8 \
         --attention-block {block} --max-error 0.001"
    ));
    ok(&o);
    let points = assert_exact(&out, 2);
    let prefill = points.iter().find(|p| p["phase"] == "prefill").unwrap();
    let above = prefill["measured_above_weights_bytes"].as_u64().unwrap();
    let kv = 4 * 2 * 2 * 8200 * 32 * 4; // layers x K,V x kv_heads x capacity x head_dim x f32
    let rope = 2 * 8200 * 16 * 4;
    let transient = above - kv - rope;
    // Two f32 score blocks (scores and softmax) and one 2048-token chunk's activations
    // (the MLP's three 2048 x 768 f32 tensors and the hidden states).
    let bound = 2 * block * 4 + 3 * 2048 * 768 * 4 + 4 * 2048 * 256 * 4;
    assert!(transient <= bound, "transient {transient} > bound {bound}");
    // The eager engine's estimate for the same point: its scores alone are 8 heads x 8192^2
    // f32, three times over.
    let eager = vp(
        "estimate --model models/vramprobe-tiny-llama --engine candle-eager --device cpu \
         --dtype f32 --max-position 8200 --batch 1 --context 8192 --decode-steps 8 --json",
    );
    ok(&eager);
    let e: Value = serde_json::from_str(&stdout(&eager)).unwrap();
    let eager_peak = e["total_bytes"].as_u64().unwrap();
    assert!(
        eager_peak > 3 * 8 * 8192 * 8192 * 4,
        "eager {eager_peak} vs chunked {}",
        prefill["measured_peak_bytes"]
    );
}

/// `report --compare` of an eager and a chunked run of the same grid shows the engines side
/// by side and, point by point, what the engine changes: the chunked prefill is smaller.
#[test]
fn compare_shows_what_the_engine_changes() {
    let (_a_dir, a, o) = bench_run("--batch 2 --context 512 --decode-steps 2");
    ok(&o);
    let (_b_dir, b, o) =
        bench_run("--engine candle-chunked --batch 2 --context 512 --decode-steps 2");
    ok(&o);
    let o = vp(&format!(
        "report --compare {} {} --format json",
        path_str(&a),
        path_str(&b)
    ));
    ok(&o);
    let text = stdout(&o);
    assert!(
        text.contains("candle-eager") && text.contains("candle-chunked"),
        "{text}"
    );
    let o = vp(&format!(
        "report --compare {} {}",
        path_str(&a),
        path_str(&b)
    ));
    ok(&o);
    let md = stdout(&o);
    assert!(
        md.contains("| engine | candle-eager | candle-chunked |"),
        "{md}"
    );
    let (ea, eb) = (read_points(&a), read_points(&b));
    let prefill = |v: &[Value]| {
        v.iter().find(|p| p["phase"] == "prefill").unwrap()["measured_peak_bytes"]
            .as_u64()
            .unwrap()
    };
    assert!(
        prefill(&eb) < prefill(&ea),
        "the chunked prefill holds less"
    );
}
