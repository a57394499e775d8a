//! The `candle-flash` engine (FlashAttention-2 on CUDA): estimated everywhere, measured only
//! by the `flash-attn` CUDA build; everything else refuses it by name, exit 2.
use super::*;
use serde_json::Value;

#[test]
fn flash_engine_estimates_long_contexts_without_scores() {
    let o = vp("estimate --model models/llama-3.1-8b-instruct --engine candle-flash --context 131064 --json");
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["engine"], "candle-flash");
    let c = &v["phases"]["prefill"]["components"];
    assert_eq!(c["kv_cache"], 131_072u64 * 131_072);
    assert!(c.get("causal_mask").is_none(), "{c}");
    let o = vp("estimate --model models/llama-3.1-8b-instruct --engine candle-chunked --context 131064 --json");
    ok(&o);
    let chunked: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["total_bytes"].as_u64() < chunked["total_bytes"].as_u64());
}

#[test]
fn flash_engine_is_refused_where_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        ("--engine candle-flash", "--device cuda"),
        (
            "--engine candle-flash --device cuda --mode train",
            "--mode inference",
        ),
        (
            "--engine candle-flash --device cuda --attention-block 65536",
            "candle-chunked",
        ),
    ] {
        let out = dir.path().join("run");
        let o = vp(&format!("bench {args} --out {}", out.display()));
        assert_eq!(o.status.code(), Some(2), "{args}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(says), "{args}: {err}");
        assert!(
            !out.exists(),
            "{args}: a refused plan made its run directory"
        );
    }
}
