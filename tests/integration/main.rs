//! Integration tests: the real binary, real files, real candle forward passes on the CPU.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod architectures;
mod bench;
mod chunked;
mod decode_steps;
mod estimate;
mod exporter;
mod flash;
mod fuzz_regressions;
mod gpu_reports;
mod html;
mod hub;
mod image;
mod layering;
mod quantized;
mod reliability;
mod report;
mod serve;
mod train;
mod vllm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (tests run with it as the working directory too).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run the vramprobe binary from the repository root.
pub fn vramprobe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramprobe"))
        .args(args)
        .current_dir(root())
        .env_remove("VRAMPROBE_LOG")
        .output()
        .expect("run vramprobe")
}

/// Run the vramprobe binary with a command line split at white space (the tests' paths have
/// none): `vp(&format!("bench --out {}", path_str(&out)))`.
pub fn vp(command_line: &str) -> Output {
    let args: Vec<&str> = command_line.split_whitespace().collect();
    vramprobe(&args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success, printing everything the binary said when it did not succeed.
pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The records of a run directory's points.jsonl.
pub fn read_points(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("points.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether an external program a test needs (`tool`, from the Debian package `package`) is
/// on PATH. Without it the test is skipped, and says so in one line on the terminal (written
/// past the test harness's capture), unless `VRAMPROBE_REQUIRE_TOOLS=1` (as `.ci/run` and
/// `scripts/test.sh` set once they installed it): then a missing tool fails the test.
pub fn have_tool(tool: &str, package: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(tool);
            p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        })
    }) || (tool.contains('/') && Path::new(tool).is_file());
    if found {
        return true;
    }
    assert!(
        std::env::var("VRAMPROBE_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{test}: `{tool}` is not on PATH and VRAMPROBE_REQUIRE_TOOLS=1 \
         (apt-get install {package}, or run scripts/test.sh)"
    );
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test}: needs `{tool}` (Debian package {package}; scripts/test.sh installs it)"
    );
    false
}

/// `vramprobe bench ARGS --out RUN` into a fresh temporary directory (kept as long as the
/// returned `TempDir`): the directory, the run directory and the output.
pub fn bench_run(args: &str) -> (tempfile::TempDir, PathBuf, Output) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = vp(&format!("bench {args} --out {}", path_str(&out)));
    (dir, out, o)
}
