use super::*;
use serde_json::Value;
use std::collections::BTreeSet;

/// The main job as the README gives it: the default grid on the CPU default model, every
/// point within 2% (total and above the weights), written point by point.
#[test]
fn default_grid_is_within_two_percent() {
    let (_dir, out, o) = bench_run("--max-error 0.02 --json");
    ok(&o);
    let printed: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let stored = read_points(&out);
    assert_eq!(printed, stored, "stdout and points.jsonl agree");

    let batches: BTreeSet<u64> = stored
        .iter()
        .map(|p| p["batch"].as_u64().unwrap())
        .collect();
    let contexts: BTreeSet<u64> = stored
        .iter()
        .map(|p| p["context"].as_u64().unwrap())
        .collect();
    assert!(
        batches.len() >= 3 && contexts.len() >= 4,
        "{batches:?} {contexts:?}"
    );
    assert_eq!(stored.len(), batches.len() * contexts.len() * 2);

    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let weights = info["measured_weights_bytes"].as_u64().unwrap();
    // 7,211,264 f32 parameters, plus a few KiB of tensor and map bookkeeping.
    assert!(
        (28_845_056..28_845_056 + 64 * 1024).contains(&weights),
        "{weights}"
    );
    assert_eq!(info["environment"]["candle_version"], "0.11.1");
    assert_eq!(info["engine"], "candle-eager");

    let mut activations_outweigh_weights = false;
    for p in &stored {
        for field in [
            "batch",
            "context",
            "phase",
            "estimated_bytes",
            "measured_peak_bytes",
            "source",
            "measured",
            "error_ratio",
            "secs_per_forward",
            "above_weights_error_ratio",
        ] {
            assert!(!p[field].is_null(), "{field} missing in {p}");
        }
        assert_eq!(p["source"], "host_alloc");
        assert_eq!(p["measured"]["host_alloc"], p["measured_peak_bytes"]);
        let (est, meas) = (
            p["estimated_bytes"].as_f64().unwrap(),
            p["measured_peak_bytes"].as_f64().unwrap(),
        );
        let err = (est - meas) / meas;
        assert!((err - p["error_ratio"].as_f64().unwrap()).abs() < 1e-12);
        assert!(err.abs() <= 0.02, "point off by {:.3}%: {p}", err * 100.0);
        if p["measured_above_weights_bytes"].as_u64().unwrap() > weights {
            activations_outweigh_weights = true;
            let above = p["above_weights_error_ratio"].as_f64().unwrap();
            assert!(
                above.abs() <= 0.02,
                "activation model off by {:.3}%: {p}",
                above * 100.0
            );
        }
    }
    assert!(
        activations_outweigh_weights,
        "the grid must reach activation-dominated points"
    );
}

/// The tolerance check is real: demand an error no estimate can meet and the bench fails,
/// naming the points, while keeping what it measured.
#[test]
fn drift_beyond_tolerance_fails_the_bench() {
    let (_dir, out, o) = bench_run("--batch 1 --context 64 --max-error 0.000001");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("exceed --max-error"), "{err}");
    assert!(err.contains("batch 1 context 64 prefill"), "{err}");
    assert_eq!(read_points(&out).len(), 2, "the measured points are kept");
}

#[test]
fn bf16_on_cpu_is_within_two_percent() {
    let (_dir, out, o) = bench_run("--dtype bf16 --batch 1,3 --context 96,700 --max-error 0.02");
    ok(&o);
    let points = read_points(&out);
    assert_eq!(points.len(), 8);
    assert!(points.iter().all(|p| p["dtype"] == "bf16"));
    // the bf16 CPU matmul's f32 widening is part of the model
    assert!(points
        .iter()
        .any(|p| p["estimated_components"]["matmul_workspace"]
            .as_u64()
            .unwrap_or(0)
            > 0));
}

#[test]
fn local_safetensors_load_and_bad_shapes_are_named() {
    use candle_core::{Device, Tensor};
    let spec =
        vramprobe::spec::ModelSpec::from_path(&root().join("models/vramprobe-tiny-llama")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights");
    std::fs::create_dir(&weights).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = spec
        .tensors()
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            (
                t.name.clone(),
                Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, weights.join("model.safetensors")).unwrap();
    let out = dir.path().join("run");
    let o = vp(&format!(
        "bench --weights {} --batch 2 --context 128 --out {} --max-error 0.02",
        path_str(&weights),
        path_str(&out)
    ));
    ok(&o);
    let info = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(info.contains("\"weights\": \"local "), "{info}");

    // A checkpoint whose tensor does not match config.json.
    let mut bad = tensors;
    bad.insert(
        "model.layers.2.mlp.up_proj.weight".into(),
        Tensor::ones((768, 255), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&bad, weights.join("model.safetensors")).unwrap();
    let o = vp(&format!(
        "bench --weights {} --out {}",
        path_str(&weights),
        path_str(&dir.path().join("run2"))
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("model.layers.2.mlp.up_proj.weight") && err.contains("[768, 255]"),
        "{err}"
    );

    // Truncated and corrupt files: named, exit 2, before anything loads.
    candle_core::safetensors::save(&bad, weights.join("model.safetensors")).unwrap();
    let good = std::fs::read(weights.join("model.safetensors")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "truncated data",
            good[..good.len() - 100].to_vec(),
            "truncated file?",
        ),
        ("truncated header", good[..40].to_vec(), "truncated"),
        (
            "not safetensors",
            b"PK\x03\x04 this is a zip".to_vec(),
            "over the",
        ),
        ("empty", Vec::new(), "too short"),
    ];
    for (what, bytes, says) in cases {
        std::fs::write(weights.join("model.safetensors"), &bytes).unwrap();
        let o = vp(&format!(
            "bench --weights {} --out {}",
            path_str(&weights),
            path_str(&dir.path().join(format!("run-{}", what.replace(' ', "-"))))
        ));
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("model.safetensors") && err.contains(says) && !err.contains("panicked"),
            "{what}: {err}"
        );
    }

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = vp(&format!(
        "bench --weights {} --out {}",
        path_str(&empty),
        path_str(&dir.path().join("run3"))
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no .safetensors files"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_grids_exit_2_before_measuring() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    for (args, expected) in [
        (vec!["--batch", "0"], "--batch 0"),
        (vec!["--context", "4096"], "max_position_embeddings 2048"),
        (vec!["--batch", "-3"], "-3"),
        (vec!["--context", "abc"], "abc"),
    ] {
        let mut all = vec!["bench", "--out", path_str(&out)];
        all.extend(args);
        let o = vramprobe(&all);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(expected),
            "{expected:?} in {}",
            stderr(&o)
        );
        assert!(
            !out.join("points.jsonl").exists(),
            "nothing measured for {all:?}"
        );
    }
    // An existing run is never appended to or overwritten.
    let o = vp(&format!(
        "bench --batch 1 --context 32 --out {}",
        path_str(&out)
    ));
    ok(&o);
    let before = std::fs::read_to_string(out.join("points.jsonl")).unwrap();
    let o = vp(&format!(
        "bench --batch 1 --context 32 --out {}",
        path_str(&out)
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("already holds a run"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("points.jsonl")).unwrap(),
        before
    );
}

/// Asking for what this build or this machine cannot do is bad input: exit 2, one clear
/// line naming the flag, and no run directory left behind with points in it.
#[test]
fn gpu_only_options_fail_clearly_on_a_cpu_build() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--find-boundary"], "--find-boundary needs a GPU"),
        (&["--max-position", "1"], "max_position_embeddings"),
        (&["--nvml-hz", "0"], "--nvml-hz"),
    ];
    for (i, (extra, expect)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("run{i}"));
        let mut args = vec!["bench", "--out", path_str(&out)];
        args.extend_from_slice(extra);
        let o = vramprobe(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{args:?}: {}", stderr(&o));
        let points = out.join("points.jsonl");
        let kept = std::fs::read_to_string(&points).unwrap_or_default();
        assert!(kept.is_empty(), "{args:?} measured something: {kept}");
    }
    if !cfg!(feature = "cuda") {
        let out = dir.path().join("cuda");
        let o = vp(&format!("bench --device cuda --out {}", path_str(&out)));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("built without CUDA"), "{}", stderr(&o));
        // Refused before anything is made: no empty run directory is left behind.
        assert!(!out.exists(), "{} was created", out.display());
    }
}

/// --max-position raises the position limit the grid is checked against.
#[test]
fn max_position_lets_longer_contexts_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // The tiny model has 2048 positions: 2100 + 8 decode steps needs the override.
    let base = [
        "bench",
        "--batch",
        "1",
        "--context",
        "2100",
        "--decode-steps",
        "2",
    ];
    let mut args = base.to_vec();
    args.extend(["--out", path_str(&out)]);
    let o = vramprobe(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out2 = dir.path().join("run2");
    let mut args = base.to_vec();
    args.extend([
        "--max-position",
        "4096",
        "--out",
        path_str(&out2),
        "--max-error",
        "0.02",
    ]);
    let o = vramprobe(&args);
    ok(&o);
    assert_eq!(read_points(&out2).len(), 2);
}

fn lines_of(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("points.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Start the default bench into `out`; wait until `n` points are stored.
fn start_and_wait(out: &Path, n: usize) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_vramprobe"))
        .args(["bench", "--out", path_str(out)])
        .current_dir(root())
        .env_remove("VRAMPROBE_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while lines_of(out).len() < n {
        assert!(start.elapsed().as_secs() < 120, "no {n} points after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child
}

fn assert_complete_grid(out: &Path) {
    let lines = lines_of(out);
    assert_eq!(lines.len(), 24, "{lines:#?}");
    let mut seen = BTreeSet::new();
    for l in &lines {
        let p: Value = serde_json::from_str(l).unwrap();
        let key = (
            p["batch"].as_u64().unwrap(),
            p["context"].as_u64().unwrap(),
            p["phase"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(key.clone()), "{key:?} stored twice");
    }
}

/// SIGKILL in the middle of a sweep (and a torn line from it): every completed point is
/// intact, and `--resume` measures only the missing ones, never one twice.
#[test]
fn killed_sweep_resumes_without_losing_or_repeating_points() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = start_and_wait(&out, 6);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = lines_of(&out);
    assert!(before.len() >= 6 && before.len() < 24, "{}", before.len());
    for l in &before {
        serde_json::from_str::<Value>(l).unwrap();
    }
    // A crash in the middle of a write leaves a torn last line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("points.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"model\":\"vramprobe-tiny-ll").unwrap();
    drop(f);

    let o = vp(&format!(
        "bench --resume {} --max-error 0.02",
        path_str(&out)
    ));
    ok(&o);
    assert_complete_grid(&out);
    let after = lines_of(&out);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "stored points were rewritten"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["resumed_at"].as_array().unwrap().len(), 1);

    // Resuming a complete run measures nothing.
    let o = vp(&format!("bench --resume {}", path_str(&out)));
    ok(&o);
    assert_eq!(lines_of(&out), after);
    // Not a run directory: bad input.
    let o = vp(&format!("bench --resume {}", path_str(dir.path())));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// SIGINT stops the sweep after the point being measured, with everything written, exit
/// 130 and a hint to resume.
#[test]
fn sigint_stops_after_the_current_point() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = start_and_wait(&out, 2);
    let pid = child.id().to_string();
    let k = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(k.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    let lines = lines_of(&out);
    assert!(lines.len() % 2 == 0 && lines.len() < 24, "{}", lines.len());
    for l in &lines {
        serde_json::from_str::<Value>(l).unwrap();
    }
    let o = vp(&format!("bench --resume {}", path_str(&out)));
    ok(&o);
    assert_complete_grid(&out);
}

/// An output directory that cannot be created or written is reported before any model is
/// loaded or measured, naming the path.
#[test]
fn unwritable_output_is_found_before_measuring() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for out in [file.join("run"), PathBuf::from("/proc/vramprobe-run")] {
        let o = vp(&format!("bench --out {}", path_str(&out)));
        assert_ne!(o.status.code(), Some(0));
        let err = stderr(&o);
        assert!(err.contains(path_str(&out)), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        // Nothing was measured: no model load, no sweep (the full grid takes seconds).
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    }
}

#[test]
fn the_sweep_shows_progress_on_a_terminal_only() {
    if !have_tool(
        "script",
        "bsdutils",
        "the_sweep_shows_progress_on_a_terminal_only",
    ) {
        return;
    }
    // `script` (util-linux) runs the bench on a pseudo-terminal and copies what it drew.
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, quiet: bool| {
        let out = dir.path().join(name);
        let cmd = format!(
            "{} bench --batch 1 --context 64,128 --decode-steps 2 --out {}{}",
            env!("CARGO_BIN_EXE_vramprobe"),
            path_str(&out),
            if quiet { " --quiet" } else { "" }
        );
        let o = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(root())
            .output()
            .expect("run script (util-linux)");
        ok(&o);
        stdout(&o)
    };
    let tty = run("tty", false);
    assert!(tty.contains("4/4 points"), "{tty}");
    assert!(tty.contains("batch 1 x 128 decode"), "{tty}");
    let quiet = run("quiet", true);
    assert!(!quiet.contains("points,"), "{quiet}");
    assert!(quiet.contains("largest |error|"), "{quiet}");
    // No terminal: no bar either.
    let o = vp(&format!(
        "bench --batch 1 --context 64 --decode-steps 2 --out {}",
        path_str(&dir.path().join("pipe"))
    ));
    ok(&o);
    assert!(!stderr(&o).contains("points,"), "{}", stderr(&o));
}

#[test]
fn a_closed_stdout_neither_panics_nor_loses_the_run() {
    // `vramprobe bench | head -1`, with the reader gone before the table is printed.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vramprobe"))
        .args([
            "bench",
            "--batch",
            "1",
            "--context",
            "64",
            "--decode-steps",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    ok(&o);
    assert!(out.join("report.html").is_file());
    assert_eq!(read_points(&out).len(), 2);
}

#[test]
fn a_full_disk_is_reported_before_measuring() {
    // The real free-space check (statvfs) with a requirement no disk meets.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vramprobe"))
        .args(["bench", "--batch", "1", "--context", "64", "--out"])
        .arg(&out)
        .current_dir(root())
        .env("VRAMPROBE_MIN_FREE_BYTES", "18446744073709551615")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(path_str(&out)) && err.contains("bytes free on its filesystem"),
        "{err}"
    );
    assert!(!out.join("points.jsonl").exists(), "nothing may be written");
    assert!(!err.contains("panicked"));
}
