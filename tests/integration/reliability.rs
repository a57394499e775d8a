//! Reliability round 2 (issue "Nothing exhausted, nothing stored twice"): the memory guard
//! under a limit the test sets (`ulimit -v` in a child shell, never by exhausting the
//! machine), the run-directory lock, and resume that keeps the run's own command and
//! checks every point.

use super::*;
use serde_json::Value;
use std::process::{Command, Stdio};

/// `vramprobe ARGS` under `ulimit -v KIB` (the address-space limit the guard reads).
fn under_ulimit(kib: u64, args: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {kib} && exec {} {args}",
            env!("CARGO_BIN_EXE_vramprobe")
        ))
        .current_dir(root())
        .env_remove("VRAMPROBE_LOG")
        .output()
        .unwrap()
}

/// A grid whose largest point cannot fit (the tiny model at batch 64 x 2040: about 25 GiB
/// estimated) is refused before anything runs under a 3 GiB limit: exit 2 naming the point,
/// no run directory; with `--over-memory skip` the point is recorded as `oom`, predicted and
/// not run, and the rest is measured.
#[test]
fn the_memory_guard_refuses_or_skips_what_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("refused");
    let grid = "--batch 1,64 --context 64,2040 --decode-steps 2";
    let o = under_ulimit(
        3 << 20,
        &format!("bench {grid} --quiet --out {}", path_str(&out)),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("1 of 4 points cannot fit in memory"), "{err}");
    assert!(err.contains("batch 64 x context 2040"), "{err}");
    assert!(err.contains("ulimit -v"), "{err}");
    assert!(!out.exists(), "a refused sweep creates nothing");

    let out = dir.path().join("skipped");
    let o = under_ulimit(
        3 << 20,
        &format!(
            "bench {grid} --quiet --over-memory skip --out {}",
            path_str(&out)
        ),
    );
    ok(&o);
    let points = read_points(&out);
    assert_eq!(points.len(), 8);
    for p in &points {
        let big = p["batch"] == 64 && p["context"] == 2040;
        assert_eq!(p["status"], if big { "oom" } else { "ok" }, "{p}");
        if big {
            let m = p["message"].as_str().unwrap();
            assert!(m.starts_with("not run: batch 64 x context 2040"), "{m}");
        }
    }
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["settings"]["over_memory"], "skip");
}

/// While a sweep writes a run directory, a second process (a resume, a sweep with the same
/// --out) is refused with exit 2 naming the first; once it ends, the resume goes ahead.
#[test]
fn a_run_directory_is_locked_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_vramprobe"))
        .args(["bench", "--quiet", "--out", path_str(&out)])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_to_string(out.join("points.jsonl"))
        .unwrap_or_default()
        .is_empty()
    {
        assert!(start.elapsed().as_secs() < 120, "no point after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for second in [
        format!("bench --resume {}", path_str(&out)),
        format!("bench --out {}", path_str(&out)),
    ] {
        let o = vp(&second);
        assert_eq!(o.status.code(), Some(2), "{second}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("in use by process {}", child.id())),
            "{second}: {err}"
        );
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let o = vp(&format!("bench --resume {}", path_str(&out)));
    ok(&o);
    assert_eq!(read_points(&out).len(), 24);
}

/// Resume from another working directory loads the same local model (stored as an absolute
/// path), keeps the run's original command, refuses a model that is not the run's, and
/// applies --max-error to every point of the run, stored before or measured now.
#[test]
fn resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        root().join("models/vramprobe-tiny-llama/config.json"),
        model.join("config.json"),
    )
    .unwrap();
    // Run half the grid by hand: stop it after two points with SIGINT.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramprobe"))
        .args(["bench", "--quiet", "--model", "model", "--out", "run"])
        .args([
            "--batch",
            "1,2",
            "--context",
            "64,128,256",
            "--decode-steps",
            "2",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while read_points_or_empty(&out) < 2 {
        assert!(start.elapsed().as_secs() < 120, "no points after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let code = child.wait().unwrap().code();
    let stored = read_points_or_empty(&out);
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let command = info["command"].clone();
    let stored_model = info["settings"]["model"].as_str().unwrap().to_string();
    assert!(Path::new(&stored_model).is_absolute(), "{stored_model}");
    if code == Some(0) {
        // The machine finished the grid before the signal: nothing left to resume.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "resume_is_exact: the sweep ended first");
        return;
    }
    assert_eq!(code, Some(130));

    // A tolerance no estimate meets: the stored points fail it too, not only the new ones.
    let o = vp(&format!(
        "bench --resume {} --max-error 0.0000001",
        path_str(&out)
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("of {} points exceed", 12)), "{err}");
    assert!(stored >= 2);
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        info["command"], command,
        "resume keeps the original command"
    );
    assert_eq!(read_points(&out).len(), 12);

    // The model changed under the run: refused, exit 2.
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 2.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let o = vp(&format!("bench --resume {}", path_str(&out)));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not the run's"), "{}", stderr(&o));
}

fn read_points_or_empty(out: &Path) -> usize {
    std::fs::read_to_string(out.join("points.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}
