//! The real hf-hub client (inside the real binary) against a local HTTP server that answers
//! like the Hugging Face Hub: repo info per revision, the recursive tree listing, and
//! HEAD/GET `/{owner}/{name}/resolve/{rev}/{file}` with ETag, X-Repo-Commit and
//! Content-Length; 401 for a gated repository without the right token. It serves a small
//! generated model (the tiny Llama with real safetensors weights), which is then benched.

use super::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_vramprobeTestToken_9f8e7d6c5b4a";

struct Repo {
    gated: bool,
    files: HashMap<String, Vec<u8>>,
}

/// A Hub-like server on 127.0.0.1; records every request line.
struct Hub {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8], head: bool) {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = s.write_all(out.as_bytes());
    if !head {
        let _ = s.write_all(body);
    }
}

fn serve(mut s: TcpStream, repos: &HashMap<String, Repo>, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut auth = None;
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("authorization:") {
            auth = Some(v.trim().to_string());
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    let _ = reader.read_exact(&mut body);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    log.lock().unwrap().push(format!("{method} {target}"));
    let head = method == "HEAD";
    let path = target.split('?').next().unwrap_or("");
    let commit = [("X-Repo-Commit", SHA.to_string())];

    // Which repo, and the rest of the path.
    let (repo_id, rest) = if let Some(r) = path.strip_prefix("/api/models/") {
        let mut it = r.splitn(3, '/');
        let (o, n, rest) = (it.next(), it.next(), it.next().unwrap_or(""));
        (
            o.zip(n).map(|(o, n)| format!("{o}/{n}")),
            format!("api/{rest}"),
        )
    } else {
        let mut it = path.trim_start_matches('/').splitn(3, '/');
        let (o, n, rest) = (it.next(), it.next(), it.next().unwrap_or(""));
        (o.zip(n).map(|(o, n)| format!("{o}/{n}")), rest.to_string())
    };
    let Some(repo) = repo_id.as_ref().and_then(|id| repos.get(id)) else {
        let err = json!({"error": "Repository not found"}).to_string();
        let h = [("X-Error-Code", "RepoNotFound".to_string())];
        return respond(&mut s, "404 Not Found", &h, err.as_bytes(), head);
    };
    if repo.gated && auth.as_deref() != Some(&format!("bearer {}", TOKEN.to_ascii_lowercase())) {
        let err = json!({"error": "Access to model is restricted. You must have access to it and be authenticated to access it. Please log in."}).to_string();
        let h = [("X-Error-Code", "GatedRepo".to_string())];
        return respond(&mut s, "401 Unauthorized", &h, err.as_bytes(), head);
    }
    let json_type = ("Content-Type", "application/json".to_string());
    if rest.starts_with("api/revision/") {
        let body = json!({"id": repo_id, "sha": SHA}).to_string();
        return respond(&mut s, "200 OK", &[json_type], body.as_bytes(), head);
    }
    if rest.starts_with("api/tree/") {
        let mut names: Vec<&String> = repo.files.keys().collect();
        names.sort();
        let list: Vec<Value> = names
            .iter()
            .map(|n| {
                json!({"type": "file", "oid": format!("oid-{n}"), "size": repo.files[*n].len(), "path": n})
            })
            .collect();
        let body = Value::Array(list).to_string();
        return respond(&mut s, "200 OK", &[json_type], body.as_bytes(), head);
    }
    if let Some(r) = rest.strip_prefix("resolve/") {
        let file = r.split_once('/').map(|(_, f)| f).unwrap_or("");
        return match repo.files.get(file) {
            Some(data) => {
                let h = [
                    commit[0].clone(),
                    ("ETag", format!("\"etag-{}-{}\"", file, data.len())),
                ];
                respond(&mut s, "200 OK", &h, data, head)
            }
            None => respond(&mut s, "404 Not Found", &commit, b"Entry not found", head),
        };
    }
    respond(&mut s, "404 Not Found", &[], b"not found", head)
}

impl Hub {
    fn start(repos: HashMap<String, Repo>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (repos, log2) = (Arc::new(repos), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (repos, log) = (repos.clone(), log2.clone());
                std::thread::spawn(move || serve(conn, &repos, &log));
            }
        });
        Hub { port, log }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The tiny Llama as a Hub repository: its config.json and a model.safetensors with
/// seeded values of the right shapes (written with candle's safetensors writer).
fn tiny_repo(gated: bool) -> Repo {
    use candle_core::{Device, Tensor};
    let spec = vramprobe::spec::ModelSpec::from_json_str(
        vramprobe::TINY_CONFIG,
        Path::new(vramprobe::TINY_CONFIG_PATH),
    )
    .unwrap();
    let tensors: HashMap<String, Tensor> = spec
        .tensors()
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * 1e-3).collect();
            (
                t.name.clone(),
                Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let mut files = HashMap::new();
    files.insert(
        "config.json".into(),
        vramprobe::TINY_CONFIG.as_bytes().to_vec(),
    );
    files.insert("model.safetensors".into(), std::fs::read(&path).unwrap());
    files.insert("README.md".into(), b"# a test model\n".to_vec());
    Repo { gated, files }
}

fn run_with(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vramprobe"));
    c.args(args)
        .current_dir(root())
        .env_remove("VRAMPROBE_LOG")
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run vramprobe")
}

#[test]
fn downloads_from_a_hub_like_server_then_benches_and_works_offline() {
    let hub = Hub::start(HashMap::from([
        ("vramprobe-test/tiny-llama".to_string(), tiny_repo(false)),
        ("vramprobe-test/gated-llama".to_string(), tiny_repo(true)),
    ]));
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let endpoint = hub.endpoint();
    let env = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HOME", path_str(home.path())),
    ];

    // 1. Download (default for a model id) and bench on the CPU.
    let run = out.path().join("run");
    let o = run_with(
        &env,
        &[
            "bench",
            "--model",
            "vramprobe-test/tiny-llama",
            "--batch",
            "1,2",
            "--context",
            "64,128",
            "--decode-steps",
            "2",
            "--out",
            path_str(&run),
            "--max-error",
            "0.02",
        ],
    );
    ok(&o);
    let reqs = hub.requests();
    for expected in [
        "GET /api/models/vramprobe-test/tiny-llama/revision/main",
        "HEAD /vramprobe-test/tiny-llama/resolve/",
        "GET /vramprobe-test/tiny-llama/resolve/",
    ] {
        assert!(
            reqs.iter().any(|r| r.starts_with(expected)),
            "{expected} not in {reqs:#?}"
        );
    }
    assert!(reqs.iter().any(|r| r.contains("/tree/")), "{reqs:#?}");
    assert!(
        !reqs.iter().any(|r| r.contains("README.md")),
        "only config and weights are fetched: {reqs:#?}"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["model"], "tiny-llama");
    let weights = info["weights"].as_str().unwrap();
    assert!(weights.contains(SHA), "{weights}");
    let measured = info["measured_weights_bytes"].as_u64().unwrap();
    assert!(
        (28_845_056..28_845_056 + 64 * 1024).contains(&measured),
        "{measured}"
    );
    let points = std::fs::read_to_string(run.join("points.jsonl")).unwrap();
    assert_eq!(points.lines().count(), 8);

    // 2. Offline: from the cache, without a single request.
    let before = hub.requests().len();
    let mut offline = env.to_vec();
    offline.push(("HF_HUB_OFFLINE", "1"));
    let o = run_with(
        &offline,
        &["estimate", "--model", "vramprobe-test/tiny-llama", "--json"],
    );
    ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["params"], 7_211_264);
    assert_eq!(hub.requests().len(), before, "offline made requests");
    let o = run_with(
        &offline,
        &["estimate", "--model", "vramprobe-test/never-fetched"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HF_HUB_OFFLINE"), "{}", stderr(&o));

    // 3. Gated without a token: one clear line, exit 2.
    let o = run_with(&env, &["estimate", "--model", "vramprobe-test/gated-llama"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("accept the license") && err.contains("HF_TOKEN"),
        "{err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, not a stack: {err}"
    );

    // 4. Gated with the token: works, and the token appears nowhere in the output, not even
    //    in the most verbose logs (every crate's, hf-hub's and reqwest's included).
    let mut with_token = env.to_vec();
    with_token.push(("HF_TOKEN", TOKEN));
    with_token.push(("VRAMPROBE_LOG", "trace"));
    let run2 = out.path().join("gated");
    let o = run_with(
        &with_token,
        &[
            "bench",
            "--model",
            "vramprobe-test/gated-llama",
            "--batch",
            "1",
            "--context",
            "64",
            "--decode-steps",
            "2",
            "--out",
            path_str(&run2),
        ],
    );
    ok(&o);
    assert!(
        stderr(&o).contains("TRACE") || stderr(&o).contains("DEBUG"),
        "verbose logs on"
    );
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&run2).unwrap() {
        files.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert!(files.len() >= 2, "run.json and points.jsonl");
    for text in [stdout(&o), stderr(&o)].into_iter().chain(files) {
        assert!(!text.contains(TOKEN), "the token leaked: {text}");
    }

    // 5. A model the Hub does not have.
    let o = run_with(&env, &["estimate", "--model", "vramprobe-test/nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such model"), "{}", stderr(&o));

    // 6. --weights download without a model id is bad input.
    let o = run_with(&env, &["bench", "--weights", "download"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// An HF_HOME that cannot hold the cache (here a file, so even root cannot write under it)
/// is named with the variable and the path before anything is asked of the Hub.
#[test]
fn an_unwritable_hub_cache_is_named() {
    let hub = Hub::start(HashMap::from([(
        "vramprobe-test/tiny-llama".to_string(),
        tiny_repo(false),
    )]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let endpoint = hub.endpoint();
    let o = run_with(
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", path_str(&file)),
        ],
        &["estimate", "--model", "vramprobe-test/tiny-llama"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("(from HF_HOME) cannot be written") && err.contains("not-a-directory/hub"),
        "{err}"
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

/// The design card's flow through the daemon, on the CPU: `serve --bench-model owner/name
/// --bench-on-start` downloads a gated model through hf-hub (the token from the environment)
/// from a server that answers like the Hub, measures it, and /metrics carries its measured
/// and estimated peaks; started again with HF_HUB_OFFLINE=1 it works from the cache.
#[test]
fn the_daemon_downloads_measures_and_exports_a_hub_model() {
    use super::serve::{fake_gpu, Daemon};
    let hub = Hub::start(HashMap::from([(
        "vramprobe-test/gated-llama".to_string(),
        tiny_repo(true),
    )]));
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let runs = dir.path().join("runs");
    let fake = dir.path().join("nvml.json");
    std::fs::write(&fake, fake_gpu(17_000_000_000)).unwrap();
    let endpoint = hub.endpoint();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--runs-dir",
        path_str(&runs),
        "--fake-nvml",
        path_str(&fake),
        "--bench-model",
        "vramprobe-test/gated-llama",
        "--bench-batch",
        "1",
        "--bench-context",
        "64,128",
        "--bench-decode-steps",
        "2",
        "--bench-on-start",
    ];
    let series = "vramprobe_bench_measured_peak_bytes{model=\"gated-llama\",dtype=\"f32\",\
                  engine=\"candle-eager\",device=\"cpu\",batch=\"1\",context=\"128\",\
                  phase=\"prefill\",source=\"host_alloc\"}";
    let d = Daemon::start_with(
        &args,
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", path_str(&home)),
            ("HF_TOKEN", TOKEN),
        ],
    );
    d.wait_for(180, "the start-up sweep to end", |d| {
        let j = d.json("/api/v1/bench");
        j["running"] == false && !j["outcome"].is_null()
    });
    let j = d.json("/api/v1/bench");
    assert_eq!(j["outcome"], "completed", "{j}");
    assert_eq!(j["stored"], 4);
    d.wait_for(30, "the run in the metrics", |d| {
        d.metrics().contains(series)
    });
    let m = d.metrics();
    assert!(m.contains("vramprobe_bench_estimated_peak_bytes{model=\"gated-llama\""));
    assert!(
        m.contains("vramprobe_gpu_memory_used_bytes"),
        "the fake GPU is exported too"
    );
    let reqs = hub.requests();
    assert!(
        reqs.iter().any(|r| r.contains("model.safetensors")),
        "the weights came from the Hub: {reqs:#?}"
    );
    assert!(!m.contains(TOKEN) && !d.get("/api/v1/bench").text().unwrap().contains(TOKEN));
    drop(d);

    // Offline, from the cache: the same sweep again, and not one request to the Hub.
    let before = hub.requests().len();
    let runs2 = dir.path().join("runs2");
    let mut args2 = args.to_vec();
    args2[3] = path_str(&runs2);
    let d = Daemon::start_with(
        &args2,
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", path_str(&home)),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    d.wait_for(180, "the offline sweep to end", |d| {
        let j = d.json("/api/v1/bench");
        j["running"] == false && !j["outcome"].is_null()
    });
    assert_eq!(d.json("/api/v1/bench")["outcome"], "completed");
    d.wait_for(30, "the offline run in the metrics", |d| {
        d.metrics().contains(series)
    });
    assert_eq!(hub.requests().len(), before, "offline means no request");
}
