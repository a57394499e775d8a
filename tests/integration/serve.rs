//! `vramprobe serve`: the real daemon on 127.0.0.1 (port chosen by the system), real HTTP
//! requests, `promtool` on its exposition and rules, and a real Prometheus server (Debian
//! package `prometheus`, installed by .ci/run) scraping it. NVML is replaced by the daemon's
//! FAKE NVML file (this machine has no GPU), which the tests also make fail and recover.

use super::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const H100_RUN: &str = "reports/gpu/2026-11-26-h100-80gb/llama3-8b-40gib-boundary";

/// A running daemon, killed when dropped.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    base: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub(crate) fn start(args: &[&str]) -> Daemon {
        Daemon::start_with(args, &[])
    }

    /// Start `vramprobe serve ARGS` with `env` set (and the HF variables of the test's own
    /// environment removed, so only what the test sets is seen).
    pub(crate) fn start_with(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramprobe"));
        cmd.arg("serve")
            .args(args)
            .current_dir(root())
            .env_remove("VRAMPROBE_LOG")
            .env_remove("VRAMPROBE_TOKEN");
        for k in [
            "HF_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_OFFLINE",
            "HF_HUB_CACHE",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{line:?}");
        Daemon {
            child,
            base: format!("http://{addr}"),
            stderr,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub(crate) fn get(&self, path: &str) -> reqwest::blocking::Response {
        client().get(self.url(path)).send().unwrap()
    }

    pub(crate) fn metrics(&self) -> String {
        self.get("/metrics").text().unwrap()
    }

    pub(crate) fn json(&self, path: &str) -> Value {
        self.get(path).json().unwrap()
    }

    /// Poll `f` for up to `secs` seconds.
    pub(crate) fn wait_for(&self, secs: u64, what: &str, mut f: impl FnMut(&Daemon) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\n--- daemon stderr\n{}",
            self.stderr.lock().unwrap()
        );
    }

    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One fake H100 as NVML would describe it.
pub(crate) fn fake_gpu(used: u64) -> String {
    let total: u64 = 85_520_809_984;
    let reserved: u64 = 555_483_136;
    serde_json::json!({
        "devices": [{
            "info": {
                "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-fake-0",
                "driver_version": "580.159.04", "cuda_driver_version": "13.0",
                "memory_total_bytes": total
            },
            "memory": {"used": used, "free": total - reserved - used, "reserved": reserved, "total": total},
            "processes": [[4242, used]]
        }]
    })
    .to_string()
}

/// A runs directory holding a copy of the committed H100 boundary run.
fn runs_with_h100(dir: &Path) -> PathBuf {
    let runs = dir.join("runs");
    let run = runs.join("h100-boundary");
    std::fs::create_dir_all(&run).unwrap();
    for f in ["run.json", "points.jsonl", "boundary.json"] {
        std::fs::copy(root().join(H100_RUN).join(f), run.join(f)).unwrap();
    }
    runs
}

fn line_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A daemon over a runs directory holding the committed H100 runs, with a FAKE NVML GPU
/// using 17 GB, polled every 200 ms; `extra` flags added.
fn h100_daemon(dir: &Path, extra: &[&str]) -> Daemon {
    let runs = runs_with_h100(dir);
    let fake = dir.join("nvml.json");
    std::fs::write(&fake, fake_gpu(17_000_000_000)).unwrap();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--runs-dir",
        path_str(&runs),
        "--fake-nvml",
        path_str(&fake),
        "--poll-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

pub(crate) fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, as .ci/run installs)");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn serve_answers_metrics_health_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = h100_daemon(dir.path(), &["--per-process"]);
    d.wait_for(10, "NVML up", |d| {
        d.metrics().contains("vramprobe_nvml_up 1")
    });

    let h = d.get("/healthz");
    assert_eq!(h.status(), 200);
    assert_eq!(h.json::<Value>().unwrap()["status"], "ok");
    let landing = d.get("/");
    assert_eq!(landing.status(), 200);
    let page = landing.text().unwrap();
    assert!(
        page.contains("/metrics") && page.contains("NVML: up, 1 GPU(s)"),
        "{page}"
    );

    // The classic text format by default, lint-clean.
    let r = d.get("/metrics");
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().unwrap();
    if have_tool(
        "promtool",
        "prometheus",
        "serve_answers_metrics_health_and_the_api (promtool check metrics)",
    ) {
        let o = promtool(&["check", "metrics"], Some(&text));
        assert!(
            o.status.success(),
            "promtool check metrics:\n{}{}\n--- exposition\n{text}",
            stdout(&o),
            stderr(&o)
        );
    }
    assert!(!text.contains("# EOF"));
    for want in [
        "vramprobe_gpu_memory_total_bytes{gpu=\"0\",uuid=\"GPU-fake-0\"} 85520809984",
        "vramprobe_gpu_memory_used_bytes{gpu=\"0\",uuid=\"GPU-fake-0\"} 17000000000",
        "vramprobe_gpu_process_memory_used_bytes{gpu=\"0\",uuid=\"GPU-fake-0\",pid=\"4242\"} 17000000000",
        "vramprobe_gpu_info{gpu=\"0\",uuid=\"GPU-fake-0\",name=\"NVIDIA H100 80GB HBM3\",driver_version=\"580.159.04\",cuda_version=\"13.0\"} 1",
        "vramprobe_build_info{version=\"0.1.0\"",
        "vramprobe_bench_run_info{model=\"meta-llama-3-8b-instruct\"",
        "vramprobe_nvml_collection_failures_total 0",
        "vramprobe_bench_running 0",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
    // A measured point of the H100 run, to the byte (batch 1 x 512 prefill, nvml_process).
    let points = std::fs::read_to_string(root().join(H100_RUN).join("points.jsonl")).unwrap();
    let p: Value = points
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|p| p["batch"] == 1 && p["context"] == 512 && p["phase"] == "prefill")
        .unwrap();
    let series = format!(
        "vramprobe_bench_measured_peak_bytes{{model=\"meta-llama-3-8b-instruct\",dtype=\"bf16\",\
         engine=\"candle-eager\",device=\"NVIDIA H100 80GB HBM3\",batch=\"1\",context=\"512\",\
         phase=\"prefill\",source=\"nvml_process\"}} {}",
        p["measured"]["nvml_process"]
    );
    assert!(text.contains(&series), "missing {series}");
    // An out-of-memory point: fitted 0, no measured series.
    assert!(text.contains(
        "vramprobe_bench_point_fitted{model=\"meta-llama-3-8b-instruct\",dtype=\"bf16\",\
         engine=\"candle-eager\",device=\"NVIDIA H100 80GB HBM3\",batch=\"1\",context=\"8192\",\
         phase=\"prefill\"} 0"
    ));

    // OpenMetrics when asked, as Prometheus asks.
    let r = client()
        .get(d.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = r.text().unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE vramprobe_nvml_collection_failures counter"));

    // The API: the stored runs, a page at a time, and each run's points.
    let all = d.json("/api/v1/runs");
    let list = all["runs"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(all["total"], 1);
    assert!(all["next"].is_null());
    assert_eq!(list[0]["id"], "h100-boundary");
    assert_eq!(list[0]["points_total"], points.lines().count());
    let one = d.json("/api/v1/runs/h100-boundary");
    assert_eq!(
        one["points"].as_array().unwrap().len(),
        points.lines().count()
    );
    assert_eq!(d.get("/api/v1/runs/nope").status(), 404);
    assert_eq!(d.get("/nope").status(), 404);

    // Every metric the dashboard and the alert rules use is one the daemon exports (the
    // per-pod, MIG, health and engine series are checked on the exporter's fixture, which
    // has them: tests/integration/exporter.rs).
    let names = deploy_metric_names();
    assert!(names.len() >= 10, "{names:?}");
    for n in names.iter().filter(|n| !exporter_metric(n)) {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
            "{n} is used by deploy/ but not exported"
        );
    }
}

#[test]
fn nvml_failing_after_start_reads_zero_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nvml.json");
    std::fs::write(&fake, fake_gpu(1 << 30)).unwrap();
    let d = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--runs-dir",
        path_str(&dir.path().join("runs")),
        "--fake-nvml",
        path_str(&fake),
        "--poll-interval",
        "200ms",
    ]);
    d.wait_for(10, "NVML up", |d| {
        d.metrics().contains("vramprobe_nvml_up 1")
    });
    let before = line_value(
        &d.metrics(),
        "vramprobe_nvml_last_success_timestamp_seconds",
    )
    .unwrap();
    // What containers see after `systemctl daemon-reload`.
    std::fs::write(&fake, r#"{"fail": "Unknown Error"}"#).unwrap();
    d.wait_for(10, "NVML down", |d| {
        d.metrics().contains("vramprobe_nvml_up 0")
    });
    let m = d.metrics();
    assert!(
        !m.contains("vramprobe_gpu_memory_used_bytes"),
        "stale device figures exported while NVML is down"
    );
    assert!(line_value(&m, "vramprobe_nvml_collection_failures_total").unwrap() >= 1.0);
    let stale = line_value(&m, "vramprobe_nvml_last_success_timestamp_seconds").unwrap();
    assert!(stale >= before);
    assert_eq!(
        d.get("/healthz").status(),
        200,
        "health must not depend on NVML"
    );
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&fake, fake_gpu(2 << 30)).unwrap();
    d.wait_for(20, "NVML back", |d| {
        d.metrics()
            .contains("vramprobe_gpu_memory_used_bytes{gpu=\"0\",uuid=\"GPU-fake-0\"} 2147483648")
    });
    let m = d.metrics();
    assert!(m.contains("vramprobe_nvml_up 1"));
    assert!(line_value(&m, "vramprobe_nvml_last_success_timestamp_seconds").unwrap() > stale);
    assert!(d.stderr.lock().unwrap().contains("NVML answers again"));
}

#[test]
fn without_nvml_the_daemon_serves_the_cpu_results() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let o = vp(&format!(
        "bench --batch 1 --context 64 --decode-steps 2 --out {}",
        path_str(&runs.join("cpu"))
    ));
    ok(&o);
    let d = Daemon::start(&["--listen", "127.0.0.1:0", "--runs-dir", path_str(&runs)]);
    d.wait_for(10, "the CPU run", |d| {
        d.metrics().contains("source=\"host_alloc\"")
    });
    let m = d.metrics();
    if !Path::new("/proc/driver/nvidia").exists() {
        assert!(m.contains("vramprobe_nvml_up 0"), "{m}");
        assert!(!m.contains("vramprobe_gpu_info"));
    }
    assert!(m.contains("vramprobe_bench_measured_peak_bytes{model=\"vramprobe-tiny-llama\""));
    assert!(m.contains("vramprobe_bench_estimated_component_bytes{model=\"vramprobe-tiny-llama\""));
}

#[test]
fn sweeps_run_one_at_a_time_and_reach_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let d = Daemon::start(&["--listen", "127.0.0.1:0", "--runs-dir", path_str(&runs)]);
    let post = |body: &str| {
        client()
            .post(d.url("/api/v1/bench"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    // Bad requests: 400 naming the field, 413 past the body limit; nothing starts.
    for (body, status, says) in [
        ("{", 400, "request body"),
        (r#"{"batch": [0]}"#, 400, "batch"),
        (r#"{"context": [64], "colour": "red"}"#, 400, "colour"),
        (r#"{"device": "tpu"}"#, 400, "device"),
        (r#"{"batch": "1,2"}"#, 400, "request body"),
        // The memory guard: terabytes of attention scores on the CPU are refused up front.
        (
            r#"{"batch": [4096], "context": [2040]}"#,
            400,
            "cannot fit in memory",
        ),
        // A file that is not a config: named as such, its contents never quoted.
        (r#"{"model": "Cargo.toml"}"#, 400, "model: cannot be read"),
    ] {
        let r = post(body);
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().unwrap();
        assert!(e["error"].as_str().unwrap().contains(says), "{body}: {e}");
        assert!(!e["error"].as_str().unwrap().contains("[package]"), "{e}");
    }
    let big = format!(r#"{{"model": "{}"}}"#, "x".repeat(20_000));
    assert_eq!(post(&big).status(), 413);
    assert_eq!(d.json("/api/v1/bench")["running"], false);

    let r = post(r#"{"batch": [1], "context": [64, 128], "decode_steps": 2}"#);
    assert_eq!(r.status(), 202);
    let started: Value = r.json().unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(started["planned"], 4);
    // One at a time.
    let r = post(r#"{"batch": [1], "context": [64]}"#);
    assert_eq!(r.status(), 409);
    d.wait_for(120, "the sweep to end", |d| {
        d.json("/api/v1/bench")["running"] == false
    });
    let j = d.json("/api/v1/bench");
    assert_eq!(j["outcome"], "completed", "{j}");
    assert_eq!(j["stored"], 4);
    let run = d.json(&format!("/api/v1/runs/{id}"));
    assert_eq!(run["points"].as_array().unwrap().len(), 4);
    let m = d.metrics();
    assert!(m.contains("vramprobe_bench_sweeps_started_total 1"), "{m}");
    assert!(m.contains("vramprobe_bench_points_stored 4"));
    assert!(m.contains(
        "vramprobe_bench_measured_peak_bytes{model=\"vramprobe-tiny-llama\",dtype=\"f32\",\
         engine=\"candle-eager\",device=\"cpu\",batch=\"1\",context=\"128\",phase=\"decode\",\
         source=\"host_alloc\"}"
    ));
    assert!(line_value(&m, "vramprobe_bench_last_success_timestamp_seconds").is_some());
    // The report was written by the sweep, as by `vramprobe bench`.
    assert!(runs.join(&id).join("report.html").is_file());

    // A training sweep: four phases per point, on the same series.
    assert_eq!(post(r#"{"lora_rank": 4}"#).status(), 400);
    let r = post(r#"{"mode": "train", "batch": [1], "context": [64]}"#);
    assert_eq!(r.status(), 202);
    let started: Value = r.json().unwrap();
    assert_eq!(started["planned"], 4);
    d.wait_for(120, "the training sweep to end", |d| {
        d.json("/api/v1/bench")["running"] == false
    });
    let j = d.json("/api/v1/bench");
    assert_eq!(j["outcome"], "completed", "{j}");
    assert_eq!(j["stored"], 4);
    let m = d.metrics();
    assert!(
        m.contains(
            "vramprobe_bench_measured_peak_bytes{model=\"vramprobe-tiny-llama\",dtype=\"f32\",\
         engine=\"candle-eager\",device=\"cpu\",batch=\"1\",context=\"64\",\
         phase=\"train_backward\",source=\"host_alloc\"}"
        ),
        "{m}"
    );

    // The serving-shaped engine: named in the request, carried to the metrics' labels,
    // beside the eager run of the same model (one series set per engine).
    let r = post(r#"{"engine": "transformers-sdpa"}"#);
    assert_eq!(r.status(), 400);
    let e: Value = r.json().unwrap();
    assert!(e["error"].as_str().unwrap().starts_with("engine: "), "{e}");
    let r =
        post(r#"{"engine": "candle-chunked", "batch": [1], "context": [64], "prefill_chunk": 32}"#);
    assert_eq!(r.status(), 202);
    d.wait_for(120, "the chunked sweep to end", |d| {
        d.json("/api/v1/bench")["running"] == false
    });
    let j = d.json("/api/v1/bench");
    assert_eq!(j["outcome"], "completed", "{j}");
    let m = d.metrics();
    assert!(
        m.contains(
            "vramprobe_bench_measured_peak_bytes{model=\"vramprobe-tiny-llama\",dtype=\"f32\",\
             engine=\"candle-chunked\",device=\"cpu\",batch=\"1\",context=\"64\",\
             phase=\"prefill\",source=\"host_alloc\"}"
        ),
        "{m}"
    );
    // The eager engine's newest run (the training sweep) is still exported beside it.
    assert!(m.contains("engine=\"candle-eager\",device=\"cpu\",batch=\"1\",context=\"64\",phase=\"train_backward\""), "{m}");
}

#[test]
fn beyond_loopback_a_token_is_required_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let o = vp(&format!(
        "serve --listen 0.0.0.0:0 --runs-dir {}",
        path_str(&runs)
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("VRAMPROBE_TOKEN"), "{}", stderr(&o));
    let o = vp("serve --listen 127.0.0.1:0 --token short");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // White space is not a token; an interval of 0 would spin the scheduler.
    let o = vramprobe(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        &" ".repeat(20),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = vp("serve --listen 127.0.0.1:0 --bench-every 0s");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--bench-every"), "{}", stderr(&o));

    // A token read from a file ends with a newline: it still matches.
    let token = "vp-test-token-5f2b9c81d0e4";
    let token_from_file = format!("{token}\n");
    let d = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--runs-dir",
        path_str(&runs),
        "--token",
        &token_from_file,
        "--bench-batch",
        "1",
        "--bench-context",
        "64",
        "--bench-decode-steps",
        "2",
    ]);
    let post = |auth: Option<&str>| {
        let mut r = client().post(d.url("/api/v1/bench"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().unwrap()
    };
    assert_eq!(post(None).status(), 401);
    assert_eq!(post(Some("Bearer wrong-token-0000000000")).status(), 401);
    assert_eq!(post(Some(token)).status(), 401, "scheme missing");
    let r = post(Some(&format!("Bearer {token}")));
    assert_eq!(r.status(), 202);
    d.wait_for(120, "the sweep to end", |d| {
        d.json("/api/v1/bench")["running"] == false
    });
    assert_eq!(d.json("/api/v1/bench")["outcome"], "completed");
    // Reads need no token; the token is in no answer, log or file.
    let mut seen = d.metrics() + &d.get("/").text().unwrap();
    seen += &d.get("/api/v1/runs").text().unwrap();
    seen += &d.get("/api/v1/bench").text().unwrap();
    seen += &d.stderr.lock().unwrap();
    for f in walk(&runs) {
        seen += &String::from_utf8_lossy(&std::fs::read(f).unwrap());
    }
    let help = vp("serve --help");
    seen += &stdout(&help);
    assert!(!seen.contains(token), "the token leaked");
    assert!(seen.contains("vramprobe_nvml_up"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn sigterm_during_a_sweep_keeps_every_stored_point() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let mut d = Daemon::start(&["--listen", "127.0.0.1:0", "--runs-dir", path_str(&runs)]);
    let r = client()
        .post(d.url("/api/v1/bench"))
        .body(r#"{"batch": [1, 2, 4], "context": [128, 256, 512, 1024], "decode_steps": 2}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.wait_for(120, "two stored points", |d| {
        let j = d.json("/api/v1/bench");
        assert_ne!(j["outcome"], "failed", "{j}");
        j["stored"].as_u64().unwrap() >= 2
    });
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let until = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}\n{}", d.stderr.lock().unwrap());
    let text = std::fs::read_to_string(runs.join(&id).join("points.jsonl")).unwrap();
    let n = text.lines().count();
    assert!(text.ends_with('\n'), "a torn last line");
    for l in text.lines() {
        serde_json::from_str::<Value>(l).unwrap();
    }
    // Stopped early, after a whole point (both phases).
    assert!((2..24).contains(&n) && n % 2 == 0, "{n} points");
    // The sweep is resumable where it stopped.
    let o = vp(&format!(
        "bench --resume {} --quiet",
        path_str(&runs.join(&id))
    ));
    ok(&o);
    let after = std::fs::read_to_string(runs.join(&id).join("points.jsonl")).unwrap();
    assert_eq!(after.lines().count(), 24);
    assert!(after.starts_with(&text));
}

#[test]
fn slow_clients_and_bad_http_are_cut_off_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--runs-dir",
        path_str(&dir.path().join("runs")),
        "--header-timeout",
        "1s",
    ]);
    let raw = |bytes: &[u8], wait: Duration| -> String {
        let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        std::thread::sleep(wait);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    // A client that never finishes its headers is cut off after the header timeout.
    let start = Instant::now();
    let answer = raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", Duration::ZERO);
    assert!(start.elapsed() < Duration::from_secs(8), "not cut off");
    assert!(!answer.contains("200 OK"), "{answer}");
    // Oversized headers and garbage get an error or a closed connection, never a crash.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let answer = raw(huge.as_bytes(), Duration::ZERO);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        Duration::ZERO,
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    let answer = raw(b"\x00\x01\x02 garbage \xff\r\n\r\n", Duration::ZERO);
    assert!(!answer.contains("200 OK"), "{answer}");
    let answer = raw(
        b"POST /api/v1/bench HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{",
        Duration::ZERO,
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Still serving, still the same process.
    assert_eq!(d.get("/healthz").status(), 200);
    assert!(!d.stderr.lock().unwrap().contains("panicked"));
}

#[test]
fn deploy_rules_and_config_pass_promtool() {
    if !have_tool(
        "promtool",
        "prometheus",
        "deploy_rules_and_config_pass_promtool",
    ) {
        return;
    }
    for args in [
        &["check", "rules", "deploy/prometheus/alerts.yml"][..],
        &["test", "rules", "deploy/prometheus/alerts.test.yml"][..],
        &["check", "config", "deploy/prometheus/scrape.yml"][..],
    ] {
        let o = promtool(args, None);
        assert!(
            o.status.success(),
            "promtool {args:?}:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/vramprobe-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    // Every metric a panel queries is one the daemon exports (or Prometheus' own `up`).
    let exported = std::fs::read_to_string(root().join("src/serve/metrics.rs")).unwrap();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("vramprobe_"))
            {
                let base = name.trim_end_matches("_total");
                assert!(
                    exported.contains(&format!("\"{base}\""))
                        || exported.contains(&format!("\"{name}\"")),
                    "panel {:?} queries {name}, which the daemon does not export",
                    p["title"]
                );
            }
        }
    }
    for title in [
        "GPU memory per pod",
        "Unattributed GPU memory (used by no listed process)",
        "Engine KV cache in use",
    ] {
        assert!(panels.iter().any(|p| p["title"] == title), "{title}");
    }
}

/// Every `vramprobe_*` name the dashboard and the alert rules use.
pub(crate) fn deploy_metric_names() -> Vec<String> {
    let mut used = String::new();
    for f in [
        "deploy/grafana/vramprobe-dashboard.json",
        "deploy/prometheus/alerts.yml",
    ] {
        used.push_str(&std::fs::read_to_string(root().join(f)).unwrap());
    }
    let mut names: Vec<String> = used
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("vramprobe_"))
        .map(str::to_string)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Names only a daemon with containers, MIG, memory health and engines exports.
pub(crate) fn exporter_metric(name: &str) -> bool {
    [
        "vramprobe_engine_",
        "vramprobe_gpu_container_",
        "vramprobe_gpu_memory_unattributed",
        "vramprobe_gpu_process_memory_unresolved",
        "vramprobe_gpu_ecc_",
        "vramprobe_gpu_remapped_",
        "vramprobe_gpu_retired_",
        "vramprobe_gpu_mig_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// A real Prometheus server on 127.0.0.1 (Debian package `prometheus`) with `config` as its
/// configuration, its data under `dir`; killed when dropped.
pub(crate) struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    pub(crate) fn start(dir: &Path, config: &str) -> Prometheus {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus, as .ci/run installs)");
        Prometheus { child, port }
    }

    /// An instant query's result vector; `None` while Prometheus does not answer.
    pub(crate) fn query(&self, q: &str) -> Option<Vec<Value>> {
        let r = client()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", q)])
            .send()
            .ok()?;
        let v: Value = r.json().ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_the_daemon() {
    if !have_tool(
        "prometheus",
        "prometheus",
        "a_real_prometheus_scrapes_the_daemon",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = h100_daemon(dir.path(), &[]);
    let config = dir.path().join("prometheus.yml");
    std::fs::copy(
        root().join("deploy/prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: vramprobe\n    static_configs:\n      - targets: ['{}']\n",
            d.addr()
        ),
    )
    .unwrap();
    let prom = Prometheus::start(dir.path(), &std::fs::read_to_string(&config).unwrap());
    let query = |q: &str| prom.query(q);
    let until = Instant::now() + Duration::from_secs(60);
    let series = loop {
        if let Some(r) = query("vramprobe_bench_measured_peak_bytes{source=\"nvml_process\"}") {
            if !r.is_empty() {
                break r;
            }
        }
        assert!(
            Instant::now() < until,
            "Prometheus never returned the benchmark series"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // One series per stored point that fitted, at the stored value.
    let points = std::fs::read_to_string(root().join(H100_RUN).join("points.jsonl")).unwrap();
    let fitted: Vec<Value> = points
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|p| p["status"] == "ok")
        .collect();
    let mut keys: Vec<(u64, u64, String)> = fitted
        .iter()
        .map(|p| {
            (
                p["batch"].as_u64().unwrap(),
                p["context"].as_u64().unwrap(),
                p["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(series.len(), keys.len());
    let one = series
        .iter()
        .find(|s| {
            s["metric"]["batch"] == "8"
                && s["metric"]["context"] == "512"
                && s["metric"]["phase"] == "prefill"
        })
        .unwrap();
    let want = fitted
        .iter()
        .find(|p| p["batch"] == 8 && p["context"] == 512 && p["phase"] == "prefill")
        .unwrap()["measured"]["nvml_process"]
        .as_u64()
        .unwrap();
    assert_eq!(one["value"][1].as_str().unwrap(), want.to_string());
    assert_eq!(one["metric"]["job"], "vramprobe");
    let up = query("vramprobe_nvml_up").unwrap();
    assert_eq!(up[0]["value"][1], "1");
    let mem = query("vramprobe_gpu_memory_used_bytes").unwrap();
    assert_eq!(mem[0]["value"][1], "17000000000");
    // The rules loaded, and the estimate-far-from-measured alert sees the -7.59% decode point.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = query("ALERTS{alertname=\"VramprobeEstimateFarFromMeasured\"}") {
            if !r.is_empty() {
                break;
            }
        }
        assert!(Instant::now() < until, "the alert rule never evaluated");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn sweeps_at_start_up_and_on_a_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let d = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--runs-dir",
        path_str(&runs),
        "--bench-on-start",
        "--bench-every",
        "2s",
        "--bench-batch",
        "1",
        "--bench-context",
        "64",
        "--bench-decode-steps",
        "2",
    ]);
    // The start-up sweep, then at least one scheduled one, each stored as its own run.
    d.wait_for(120, "two completed sweeps", |d| {
        let m = d.metrics();
        line_value(&m, "vramprobe_bench_sweeps_started_total").unwrap_or(0.0) >= 2.0
            && m.contains("vramprobe_bench_running 0")
            && d.json("/api/v1/runs")["runs"].as_array().unwrap().len() >= 2
    });
    let j = d.json("/api/v1/bench");
    assert_eq!(j["outcome"], "completed", "{j}");
    assert_eq!(j["request"]["batch"], serde_json::json!([1]));
    assert!(d
        .metrics()
        .contains("vramprobe_bench_sweeps_failed_total 0"));
}

/// The daemon stays bounded whatever the runs directory holds: a run of 8,192 records exports
/// 2,048 of them and says how many it left out, the API pages through runs and points, and a
/// FIFO named points.jsonl (a read that would block forever) neither stops start-up nor the
/// answers nor SIGTERM.
#[test]
fn huge_runs_and_blocking_files_keep_the_daemon_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let runs = runs_with_h100(dir.path());
    // A 64 x 64 grid's worth of records, from the committed run's first record.
    let first = std::fs::read_to_string(runs.join("h100-boundary/points.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let template: Value = serde_json::from_str(&first).unwrap();
    let huge = runs.join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    let mut info: Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("h100-boundary/run.json")).unwrap(),
    )
    .unwrap();
    info["model"] = "huge-grid".into();
    std::fs::write(huge.join("run.json"), info.to_string()).unwrap();
    let mut lines = String::new();
    for b in 1..=64u64 {
        for c in 1..=64u64 {
            for phase in ["prefill", "decode"] {
                let mut p = template.clone();
                p["model"] = "huge-grid".into();
                p["batch"] = b.into();
                p["context"] = (c * 128).into();
                p["phase"] = phase.into();
                lines.push_str(&p.to_string());
                lines.push('\n');
            }
        }
    }
    std::fs::write(huge.join("points.jsonl"), lines).unwrap();
    // A run whose points.jsonl is a FIFO nobody writes.
    let fifo_run = runs.join("fifo");
    std::fs::create_dir_all(&fifo_run).unwrap();
    std::fs::write(fifo_run.join("run.json"), info.to_string()).unwrap();
    nix::unistd::mkfifo(
        &fifo_run.join("points.jsonl"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();

    let started = Instant::now();
    let d = Daemon::start(&["--listen", "127.0.0.1:0", "--runs-dir", path_str(&runs)]);
    assert!(started.elapsed() < Duration::from_secs(20));
    let m = d.metrics();
    let exported = m
        .lines()
        .filter(|l| {
            l.starts_with("vramprobe_bench_point_fitted{") && l.contains("model=\"huge-grid\"")
        })
        .count();
    assert_eq!(exported, 2048, "the first 2048 records only");
    assert_eq!(
        line_value(
            &m,
            "vramprobe_bench_records_not_exported{model=\"huge-grid\""
        ),
        Some(8192.0 - 2048.0),
        "{m}"
    );
    assert!(m.len() < 8 << 20, "a scrape of {} bytes", m.len());

    // Pages: runs by two, points by 1000 with a link to the next page.
    let page = d.json("/api/v1/runs?limit=2");
    assert_eq!(page["total"], 3);
    assert_eq!(page["runs"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap().to_string();
    assert_eq!(next, "/api/v1/runs?offset=2&limit=2");
    assert_eq!(d.json(&next)["runs"].as_array().unwrap().len(), 1);
    let pts = d.json("/api/v1/runs/huge");
    assert_eq!(pts["points_total"], 8192);
    assert_eq!(pts["points"].as_array().unwrap().len(), 1000);
    assert_eq!(pts["next"], "/api/v1/runs/huge?offset=1000&limit=1000");
    let last = d.json("/api/v1/runs/huge?offset=8000&limit=1000");
    assert_eq!(last["points"].as_array().unwrap().len(), 192);
    assert!(last["next"].is_null());
    for bad in ["limit=0", "limit=20000", "offset=-1", "colour=red"] {
        let r = d.get(&format!("/api/v1/runs?{bad}"));
        assert_eq!(r.status(), 400, "{bad}");
    }
    // The FIFO's run is listed with the reason its points were not read.
    let fifo = d.json("/api/v1/runs/fifo");
    assert!(
        fifo["problem"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{fifo}"
    );

    // SIGTERM still ends it promptly.
    let t = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let mut d = d;
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

/// A daemon killed mid-sweep leaves its sweep running; the next daemon on the same runs
/// directory adopts it (by the run's lock): shown as running, new sweeps refused until it
/// ends, its end seen, and no point lost or stored twice.
#[test]
fn a_restarted_daemon_adopts_the_sweep_it_finds_running() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let a = Daemon::start(&["--listen", "127.0.0.1:0", "--runs-dir", path_str(&runs)]);
    let r = client()
        .post(a.url("/api/v1/bench"))
        .header("content-type", "application/json")
        .body(r#"{"batch": [1, 2, 4], "context": [1024, 2040], "decode_steps": 8}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let started: Value = r.json().unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    a.wait_for(120, "the first point", |d| {
        d.json("/api/v1/bench")["stored"].as_u64().unwrap_or(0) >= 1
    });
    a.signal(nix::sys::signal::Signal::SIGKILL);
    drop(a);

    let b = Daemon::start(&["--listen", "127.0.0.1:0", "--runs-dir", path_str(&runs)]);
    let j = b.json("/api/v1/bench");
    assert_eq!(j["running"], true, "{j}");
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["planned"], 12);
    assert!(j["message"].as_str().unwrap().contains("adopted"), "{j}");
    let r = client()
        .post(b.url("/api/v1/bench"))
        .header("content-type", "application/json")
        .body(r#"{"batch": [1], "context": [64]}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 409, "one sweep at a time, adopted or not");
    b.wait_for(300, "the adopted sweep to end", |d| {
        d.json("/api/v1/bench")["running"] == false
    });
    let j = b.json("/api/v1/bench");
    assert_eq!(j["outcome"], "completed", "{j}");
    assert_eq!(j["stored"], 12);
    let points = read_points(&runs.join(&id));
    assert_eq!(points.len(), 12, "every point once");
}
