//! Reports re-rendered from committed runs match their golden files byte for byte
//! (`UPDATE_GOLDEN=1 cargo test --test integration report` rewrites them after an intended
//! change), and a bench leaves report.json and report.md beside its points.

use super::*;
use serde_json::Value;

fn golden(args: &[&str], file: &str) {
    let o = vramprobe(args);
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
    golden(
        &["report", run, "--format", "md"],
        "llama3-8b-40gib-boundary.report.md",
    );
    golden(
        &["report", run, "--format", "json"],
        "llama3-8b-40gib-boundary.report.json",
    );
    let o = vp("report models");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn compare_shows_what_changed_between_two_runs() {
    let a = "reports/gpu/2026-11-26-h100-80gb/llama3-8b-grid";
    let b = "reports/gpu/2026-11-26-h100-80gb/llama3-8b-40gib-boundary";
    golden(
        &["report", "--compare", a, b],
        "llama3-8b-grid-vs-40gib-boundary.compare.md",
    );
    let o = vp(&format!("report --compare {} {} --format json", a, b));
    ok(&o);
    let c: Value = serde_json::from_str(&stdout(&o)).unwrap();
    // What differs: the memory limit; what does not: the GPU.
    let fact = |what: &str| {
        c["facts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["what"] == what)
            .unwrap()
            .clone()
    };
    assert_eq!(fact("memory limit")["same"], false);
    assert_eq!(fact("memory limit")["b"], "40.00 GiB");
    assert_eq!(fact("device")["same"], true);
    // Batch 1 x 8192 fitted on the whole card, not in 40 GiB.
    let p = c["shared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["batch"] == 1 && p["context"] == 8192 && p["phase"] == "prefill")
        .unwrap();
    assert_eq!(
        (p["status_a"].as_str(), p["status_b"].as_str()),
        (Some("ok"), Some("oom"))
    );
    assert!(p["measured_a_bytes"].as_u64().unwrap() > 40 << 30);
    assert!(p["measured_change_ratio"].is_null());
    // A point in both that fitted in both: the same machine measured it within 1%.
    let q = c["shared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["batch"] == 2 && p["context"] == 2048 && p["phase"] == "prefill")
        .unwrap();
    assert!(
        q["measured_change_ratio"].as_f64().unwrap().abs() < 0.01,
        "{q}"
    );
    // Points only in one run: the grid's 128-token column is not in the boundary run.
    assert!(
        c["only_a"].to_string().contains("[1,128,\"prefill\"]"),
        "{}",
        c["only_a"]
    );
    // A run against itself: nothing changed.
    let o = vp(&format!("report --compare {} {}", a, a));
    ok(&o);
    assert!(stdout(&o).contains("The two runs were made the same way."));
    assert!(stdout(&o).contains("Largest change of the measured peak: +0.00%"));
    // Bad input: not a run directory, html for a comparison, a single run.
    let o = vp(&format!("report --compare {} models", a));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("models: no run.json there"));
    let o = vp(&format!("report --compare {} {} --format html", a, b));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = vp(&format!("report --compare {}", a));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn bench_writes_its_report() {
    let (_dir, out, o) = bench_run("--batch 1,2 --context 64,128 --decode-steps 2");
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
    // The environment names the commit the binary was built from.
    let commit = r["run"]["environment"]["git_commit"].as_str().unwrap();
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    for f in [
        "report.html",
        "plot-memory.svg",
        "plot-components.svg",
        "plot-error.svg",
    ] {
        assert!(out.join(f).is_file(), "bench left no {f}");
    }
    // Re-rendering gives the same bytes.
    let o = vp(&format!("report {}", path_str(&out)));
    ok(&o);
    assert_eq!(stdout(&o), md);
}
