//! Every decode phase keeps its steps: what each source read at each step's end (and on a
//! GPU after the settle), shown by `vramprobe report RUN --decode-steps`.

use super::*;
use serde_json::Value;

/// The tiny model (config.json): K and V bytes one token adds to one sequence's cache in f32.
fn kv_bytes_per_token() -> u64 {
    let text =
        std::fs::read_to_string(root().join("models/vramprobe-tiny-llama/config.json")).unwrap();
    let c: Value = serde_json::from_str(&text).unwrap();
    let n = |k: &str| c[k].as_u64().unwrap();
    let head_dim = n("hidden_size") / n("num_attention_heads");
    2 * n("num_hidden_layers") * n("num_key_value_heads") * head_dim * 4
}

fn decode_trace(points: &[Value], batch: u64) -> Vec<Value> {
    let p = points
        .iter()
        .find(|p| p["phase"] == "decode" && p["batch"] == batch)
        .unwrap_or_else(|| panic!("no decode point at batch {batch}"));
    p["decode_trace"].as_array().cloned().unwrap_or_default()
}

fn current(step: &Value) -> u64 {
    step["current"]["host_alloc"].as_u64().unwrap()
}

/// candle-eager grows its KV cache with `cat` at every step: the bytes in use at each
/// step's end grow by exactly one token's K and V per sequence. candle-chunked writes into
/// a cache made at the prefill: what is in use stays where it was.
#[test]
fn each_decode_step_is_recorded_and_follows_the_kv_cache() {
    let per_token = kv_bytes_per_token();
    let (_d, out, o) = bench_run("--batch 1,2 --context 64 --decode-steps 5");
    ok(&o);
    let points = read_points(&out);
    for batch in [1u64, 2] {
        let trace = decode_trace(&points, batch);
        assert_eq!(trace.len(), 5, "{trace:?}");
        for (i, s) in trace.iter().enumerate() {
            assert_eq!(s["step"].as_u64(), Some(i as u64 + 1));
            assert_eq!(s["kv_len"].as_u64(), Some(64 + i as u64 + 1));
            let peak = s["peak"]["host_alloc"].as_u64().unwrap();
            assert!(peak >= current(s), "{s}");
            // Nothing to hand back on the CPU.
            assert!(s.get("settled").is_none(), "{s}");
        }
        for w in trace.windows(2) {
            assert_eq!(
                current(&w[1]) - current(&w[0]),
                batch * per_token,
                "batch {batch}: one token's K and V per sequence: {w:?}"
            );
        }
        // The phase's peak is the highest step's, less what was in use before the point.
        let p = points
            .iter()
            .find(|p| p["phase"] == "decode" && p["batch"] == batch)
            .unwrap();
        let last_peak = trace.last().unwrap()["peak"]["host_alloc"]
            .as_u64()
            .unwrap();
        assert!(last_peak >= p["measured"]["host_alloc"].as_u64().unwrap());
    }
    // The prefill records carry no trace.
    assert!(points
        .iter()
        .filter(|p| p["phase"] == "prefill")
        .all(|p| p.get("decode_trace").is_none()));

    let (_d, out, o) = bench_run(
        "--engine candle-chunked --batch 2 --context 64 --decode-steps 5 --max-error 0.05",
    );
    ok(&o);
    let trace = decode_trace(&read_points(&out), 2);
    assert_eq!(trace.len(), 5);
    let first = current(&trace[0]);
    for s in &trace {
        let drift = current(s).abs_diff(first);
        assert!(
            drift < per_token,
            "the preallocated cache does not grow: {drift} B at {s}"
        );
    }
}

/// `report --decode-steps`: a table per decode point in Markdown, the same as JSON; html is
/// refused; a run stored before traces existed says it has none.
#[test]
fn report_shows_the_decode_steps() {
    let (_d, out, o) = bench_run("--batch 1,2 --context 32,64 --decode-steps 3");
    ok(&o);
    let o = vp(&format!("report {} --decode-steps", path_str(&out)));
    ok(&o);
    let md = stdout(&o);
    for (b, s) in [(1, 32), (1, 64), (2, 32), (2, 64)] {
        assert!(
            md.contains(&format!("## batch {b} x context {s} (grid)")),
            "{md}"
        );
    }
    assert!(
        md.contains("| step | kv_len | ms | host_alloc end | host_alloc peak |"),
        "{md}"
    );
    assert!(md.contains("| 3 | 67 |"), "{md}");

    let o = vp(&format!(
        "report {} --decode-steps --format json",
        path_str(&out)
    ));
    ok(&o);
    let v: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.len(), 4);
    let stored = read_points(&out);
    for p in &v {
        let (b, s) = (p["batch"].as_u64().unwrap(), p["context"].as_u64().unwrap());
        let rec = stored
            .iter()
            .find(|r| r["phase"] == "decode" && r["batch"] == b && r["context"] == s)
            .unwrap();
        let steps = p["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3);
        for (row, st) in steps.iter().zip(rec["decode_trace"].as_array().unwrap()) {
            assert_eq!(
                row["sources"]["host_alloc"]["current_bytes"],
                st["current"]["host_alloc"]
            );
        }
    }

    let o = vp(&format!(
        "report {} --decode-steps --format html",
        path_str(&out)
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--decode-steps"), "{}", stderr(&o));

    let old = root().join("reports/gpu/2026-11-26-h100-80gb/llama3-8b-grid");
    let o = vp(&format!("report {} --decode-steps", path_str(&old)));
    ok(&o);
    assert!(stdout(&o).contains("No decode phase"), "{}", stdout(&o));
}
