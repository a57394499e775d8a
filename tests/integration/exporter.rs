//! The per-pod exporter: the real daemon attributes fake NVML processes (named as fake:
//! this machine has no GPU) to containers through a fixture /proc tree, re-exports real
//! HTTP engine endpoints on 127.0.0.1 (vLLM- and SGLang-shaped, and a dead one), passes
//! `promtool check metrics`, and is scraped by a real Prometheus.

use super::serve::{deploy_metric_names, exporter_metric, free_port, promtool, Daemon, Prometheus};
use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const UID: &str = "8b5f0d6e-1c2a-4b3d-9e8f-0a1b2c3d4e5f";

/// A process in the fixture /proc: its stat (start time in field 22) and cgroup.
fn proc_entry(root: &Path, pid: u32, start: u64, cgroup: &str) {
    let d = root.join(pid.to_string());
    std::fs::create_dir_all(&d).unwrap();
    let fields: Vec<String> = (4..22).map(|i| i.to_string()).collect();
    std::fs::write(
        d.join("stat"),
        format!(
            "{pid} (python3 -m vllm) S {} {start} 0 0\n",
            fields.join(" ")
        ),
    )
    .unwrap();
    std::fs::write(d.join("cgroup"), cgroup).unwrap();
}

/// A /proc with a Burstable pod (systemd driver, containerd: two processes), a Docker
/// container (cgroupfs, cgroup v1), and a host process.
fn fixture_proc(root: &Path) {
    let u = UID.replace('-', "_");
    let pod = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{A}.scope\n"
    );
    proc_entry(root, 1001, 500, &pod);
    proc_entry(root, 1002, 501, &pod);
    proc_entry(
        root,
        2001,
        600,
        &format!("12:memory:/docker/{B}\n1:name=systemd:/docker/{B}\n"),
    );
    proc_entry(root, 3001, 700, "0::/system.slice/ollama.service\n");
}

const GIB: u64 = 1 << 30;

/// Two fake GPUs: GPU 0 whole (three containers' processes, one PID not in /proc), GPU 1
/// in MIG mode with two instances; memory health on GPU 0 only.
fn fake_nvml() -> String {
    let total: u64 = 85_520_809_984;
    let mem = |used: u64, total: u64| serde_json::json!({"used": used, "free": total - used, "reserved": 0, "total": total});
    serde_json::json!({
        "devices": [
            {
                "info": {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-fake-0",
                         "driver_version": "580.159.04", "cuda_driver_version": "13.0",
                         "memory_total_bytes": total},
                "memory": mem(40 * GIB, total),
                "processes": [[1001, 20 * GIB], [1002, 4 * GIB], [2001, 10 * GIB],
                              [3001, 2 * GIB], [9999, GIB]],
                "health": {"ecc_corrected_volatile": 3, "ecc_uncorrected_volatile": 0,
                           "ecc_corrected_aggregate": 12, "ecc_uncorrected_aggregate": 1,
                           "remapped_rows_correctable": 2, "remapped_rows_uncorrectable": 0,
                           "remapped_rows_pending": true, "remapped_rows_failed": false}
            },
            {
                "info": {"index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-fake-1",
                         "driver_version": "580.159.04", "cuda_driver_version": "13.0",
                         "memory_total_bytes": total},
                "memory": mem(12 * GIB, total),
                "health": {"retired_pages_pending": false},
                "mig": [
                    {"index": 0, "uuid": "MIG-fake-1-0", "memory": mem(8 * GIB, 20 * GIB),
                     "processes": [[1002, 7 * GIB]]},
                    {"index": 1, "uuid": "MIG-fake-1-1", "memory": mem(GIB, 20 * GIB), "processes": []}
                ]
            }
        ]
    })
    .to_string()
}

/// An HTTP server on 127.0.0.1 answering every request with `body` (a serving engine's
/// /metrics); its address.
fn engine_endpoint(body: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/metrics")
}

const VLLM: &str = "# TYPE vllm:kv_cache_usage_perc gauge\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"meta-llama/Meta-Llama-3-8B-Instruct\"} 0.25\n\
# TYPE vllm:cache_config_info gauge\n\
vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"27158\"} 1.0\n";

const SGLANG: &str =
    "sglang:token_usage{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 0.5\n\
sglang:max_total_num_tokens{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 450000\n";

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: Daemon,
}

fn start(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    fixture_proc(&proc_root);
    let nvml = dir.path().join("nvml.json");
    std::fs::write(&nvml, fake_nvml()).unwrap();
    let runs = dir.path().join("runs");
    let vllm = engine_endpoint(VLLM);
    let sglang = engine_endpoint(SGLANG);
    let dead = format!("http://127.0.0.1:{}/metrics", free_port());
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--runs-dir".into(),
        path_str(&runs).into(),
        "--fake-nvml".into(),
        path_str(&nvml).into(),
        "--poll-interval".into(),
        "200ms".into(),
        "--proc-root".into(),
        path_str(&proc_root).into(),
        "--engine-metrics".into(),
        vllm,
        "--engine-metrics".into(),
        sglang,
        "--engine-metrics".into(),
        dead,
        "--engine-model".into(),
        "meta-llama/Meta-Llama-3-8B-Instruct=models/meta-llama-3-8b-instruct".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&refs);
    let containers = !extra.contains(&"--no-containers");
    daemon.wait_for(20, "containers and engines in /metrics", |d| {
        let m = d.metrics();
        (!containers || m.contains("vramprobe_gpu_container_memory_used_bytes"))
            && m.contains("vramprobe_engine_kv_cache_usage_ratio")
            && m.contains("vramprobe_engine_scrape_errors_total{endpoint=")
    });
    Fixture { _dir: dir, daemon }
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn memory_is_exported_per_container_pod_and_mig_instance() {
    let f = start(&[]);
    let m = f.daemon.metrics();
    let gib = |x: u64| (x * GIB) as f64;
    let c = |gpu: &str, uuid: &str, pod: &str, id: &str| {
        format!(
            "vramprobe_gpu_container_memory_used_bytes{{gpu=\"{gpu}\",uuid=\"{uuid}\",pod_uid=\"{pod}\",container_id=\"{id}\"}}"
        )
    };
    // The pod's two processes summed; Docker without a pod; the host process.
    assert_eq!(
        value(&m, &c("0", "GPU-fake-0", UID, A)),
        Some(gib(24)),
        "{m}"
    );
    assert_eq!(value(&m, &c("0", "GPU-fake-0", "", B)), Some(gib(10)));
    assert_eq!(value(&m, &c("0", "GPU-fake-0", "", "")), Some(gib(2)));
    // 40 GiB used, 37 GiB of listed processes; PID 9999 is not in /proc.
    assert_eq!(
        value(
            &m,
            "vramprobe_gpu_memory_unattributed_bytes{gpu=\"0\",uuid=\"GPU-fake-0\"}"
        ),
        Some(gib(3))
    );
    assert_eq!(
        value(
            &m,
            "vramprobe_gpu_process_memory_unresolved_bytes{gpu=\"0\",uuid=\"GPU-fake-0\"}"
        ),
        Some(gib(1))
    );
    // MIG: the instance's process, the instance's own unattributed rest and memory.
    assert_eq!(value(&m, &c("1", "MIG-fake-1-0", UID, A)), Some(gib(7)));
    assert_eq!(
        value(
            &m,
            "vramprobe_gpu_memory_unattributed_bytes{gpu=\"1\",uuid=\"MIG-fake-1-0\"}"
        ),
        Some(gib(1))
    );
    assert_eq!(
        value(
            &m,
            "vramprobe_gpu_mig_memory_used_bytes{gpu=\"1\",uuid=\"GPU-fake-1\",mig_index=\"0\",mig_uuid=\"MIG-fake-1-0\"}"
        ),
        Some(gib(8))
    );
    assert_eq!(value(&m, "vramprobe_gpu_container_series"), Some(4.0));
    assert_eq!(
        value(&m, "vramprobe_gpu_container_series_dropped_total"),
        Some(0.0)
    );
    // Memory health: counters where NVML has them, absent (not zero) where not.
    assert_eq!(
        value(
            &m,
            "vramprobe_gpu_ecc_errors_total{gpu=\"0\",uuid=\"GPU-fake-0\",error_type=\"uncorrected\",counter=\"aggregate\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "vramprobe_gpu_remapped_rows_total{gpu=\"0\",uuid=\"GPU-fake-0\",error_type=\"correctable\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &m,
            "vramprobe_gpu_remapped_rows_pending{gpu=\"0\",uuid=\"GPU-fake-0\"}"
        ),
        Some(1.0)
    );
    assert!(
        !m.contains("vramprobe_gpu_ecc_errors_total{gpu=\"1\""),
        "GPU 1 has no ECC figures"
    );
    assert!(
        !m.contains("vramprobe_gpu_retired_pages_total{"),
        "no retired-page figures at all"
    );
    // Every per-pod, MIG, health and engine name the dashboard and alerts use is exported.
    for n in deploy_metric_names().iter().filter(|n| exporter_metric(n)) {
        assert!(
            m.lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
            "{n} is used by deploy/ but not exported"
        );
    }
    // Clean exposition.
    if have_tool(
        "promtool",
        "prometheus",
        "memory_is_exported_per_container_pod_and_mig_instance",
    ) {
        let o = promtool(&["check", "metrics"], Some(&m));
        assert!(o.status.success(), "{}{}\n{m}", stdout(&o), stderr(&o));
    }
}

#[test]
fn engines_kv_cache_is_reexported_with_the_prediction_and_a_dead_one_is_a_metric() {
    let f = start(&[]);
    let m = f.daemon.metrics();
    let series = |name: &str, engine: &str, model: &str| -> Option<f64> {
        m.lines().find_map(|l| {
            (l.starts_with(&format!("{name}{{"))
                && l.contains(&format!("engine=\"{engine}\""))
                && l.contains(&format!("model=\"{model}\"")))
            .then(|| l.rsplit(' ').next().unwrap().parse().unwrap())
        })
    };
    let llama = "meta-llama/Meta-Llama-3-8B-Instruct";
    assert_eq!(
        series("vramprobe_engine_kv_cache_usage_ratio", "vllm", llama),
        Some(0.25)
    );
    assert_eq!(
        series("vramprobe_engine_kv_cache_blocks", "vllm", llama),
        Some(27_158.0)
    );
    assert_eq!(
        series("vramprobe_engine_kv_cache_tokens", "vllm", llama),
        Some(434_528.0)
    );
    // Llama-3-8B: 128 KiB of KV per token in bf16.
    let kv = 434_528.0 * 131_072.0;
    assert_eq!(
        series("vramprobe_engine_predicted_kv_cache_bytes", "vllm", llama),
        Some(kv)
    );
    assert_eq!(
        series(
            "vramprobe_engine_predicted_kv_cache_used_bytes",
            "vllm",
            llama
        ),
        Some(kv / 4.0)
    );
    let w = series("vramprobe_engine_predicted_weights_bytes", "vllm", llama).unwrap();
    assert_eq!(w, (8_030_261_248u64 * 2 + 8192 * 128 * 2) as f64);
    let qwen = "Qwen/Qwen2.5-7B-Instruct";
    assert_eq!(
        series("vramprobe_engine_kv_cache_usage_ratio", "sglang", qwen),
        Some(0.5)
    );
    assert_eq!(
        series("vramprobe_engine_kv_cache_tokens", "sglang", qwen),
        Some(450_000.0)
    );
    assert_eq!(
        series("vramprobe_engine_predicted_kv_cache_bytes", "sglang", qwen),
        None,
        "model not named"
    );
    // Two endpoints up, one down and counting errors; the daemon's own scrape still 200.
    let ups: Vec<f64> = m
        .lines()
        .filter(|l| l.starts_with("vramprobe_engine_up{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ups.iter().filter(|u| **u == 1.0).count(), 2, "{m}");
    assert_eq!(ups.iter().filter(|u| **u == 0.0).count(), 1);
    f.daemon
        .wait_for(10, "the dead endpoint's errors grow", |d| {
            d.metrics().lines().any(|l| {
                l.starts_with("vramprobe_engine_scrape_errors_total{")
                    && l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 2.0
            })
        });
    assert_eq!(f.daemon.get("/metrics").status(), 200);
}

#[test]
fn the_container_cap_keeps_the_largest_and_counts_the_rest() {
    let f = start(&["--max-containers", "2"]);
    f.daemon.wait_for(10, "dropped series counted", |d| {
        value(&d.metrics(), "vramprobe_gpu_container_series_dropped_total")
            .is_some_and(|v| v >= 3.0)
    });
    let m = f.daemon.metrics();
    assert_eq!(value(&m, "vramprobe_gpu_container_series"), Some(2.0));
    let kept: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("vramprobe_gpu_container_memory_used_bytes{"))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter().any(|l| l.ends_with(&format!(" {}", 24 * GIB))),
        "{kept:?}"
    );
    assert!(
        kept.iter().any(|l| l.ends_with(&format!(" {}", 10 * GIB))),
        "{kept:?}"
    );
}

#[test]
fn without_attribution_no_container_series() {
    let f = start(&["--no-containers"]);
    let m = f.daemon.metrics();
    assert!(!m.contains("vramprobe_gpu_container_memory_used_bytes"));
    assert!(!m.contains("vramprobe_gpu_memory_unattributed_bytes"));
}

#[test]
fn a_real_prometheus_scrapes_pods_and_engines() {
    if !have_tool(
        "prometheus",
        "prometheus",
        "a_real_prometheus_scrapes_pods_and_engines",
    ) {
        return;
    }
    let f = start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        dir.path(),
        &format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: vramprobe\n    static_configs:\n      - targets: ['{}']\n",
            f.daemon.addr()
        ),
    );
    let query = |q: &str| prom.query(q).unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(60);
    // Per pod, summed over GPUs and MIG instances, as a dashboard asks it.
    let q = format!(
        "sum by (pod_uid) (vramprobe_gpu_container_memory_used_bytes{{pod_uid=\"{UID}\"}})"
    );
    let r = loop {
        let r = query(&q);
        if !r.is_empty() {
            break r;
        }
        assert!(
            Instant::now() < until,
            "Prometheus never returned the pod's memory"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let v: f64 = r[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(v, (31 * GIB) as f64);
    let e = query("vramprobe_engine_kv_cache_usage_ratio{engine=\"vllm\"}");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["value"][1], "0.25");
}
