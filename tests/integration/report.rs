//! Reports re-rendered from committed runs match their golden files byte for byte
//! (`UPDATE_GOLDEN=1 cargo test --test integration report` rewrites them after an intended
//! change), and a bench leaves report.json and report.md beside its points.

use super::*;
use serde_json::Value;

fn golden(run: &str, format: &str, file: &str) {
    let o = vramprobe(&["report", run, "--format", format]);
    ok(&o);
    let path = root().join("tests/golden").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, stdout(&o)).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        stdout(&o),
        want,
        "{} differs from the re-rendered report",
        path.display()
    );
}

#[test]
fn reports_of_committed_runs_match_their_golden_files() {
    let run = "reports/gpu/2026-11-26-h100-80gb/llama3-8b-40gib-boundary";
    golden(run, "md", "llama3-8b-40gib-boundary.report.md");
    golden(run, "json", "llama3-8b-40gib-boundary.report.json");
    let o = vramprobe(&["report", "models"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn bench_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = vramprobe(&[
        "bench",
        "--batch",
        "1,2",
        "--context",
        "64,128",
        "--decode-steps",
        "2",
        "--out",
        path_str(&out),
    ]);
    ok(&o);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["points"].as_array().unwrap().len(), 8);
    assert_eq!(r["run"]["environment"]["candle_version"], "0.11.1");
    let headline = r["headline"].as_str().unwrap();
    assert!(
        headline.starts_with("vramprobe-tiny-llama in F32 on the CPU"),
        "{headline}"
    );
    assert!(stdout(&o).contains(headline));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(&format!("**{headline}**")));
    assert!(md.contains("## The rule of thumb against the measurement"));
    // Re-rendering gives the same bytes.
    let o = vramprobe(&["report", path_str(&out)]);
    ok(&o);
    assert_eq!(stdout(&o), md);
}
