//! Every input the fuzzers were seeded with or found a crash with (fuzz/corpus, fuzz/regressions)
//! replayed through the same code as the fuzz targets: each must give a value or an error,
//! never a panic.

use super::root;
use vramprobe::estimate::{estimate, Backend, EngineProfile, Workload};
use vramprobe::spec::{DType, ModelSpec};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["fuzz/corpus", "fuzz/regressions"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push((
                    format!("{dir}/{target}/{name}"),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn config_json_inputs_never_panic() {
    let all = inputs("config_json");
    assert!(all.len() >= 2, "the seeds are missing");
    let mut parsed = 0;
    for (name, bytes) in all {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(spec) = ModelSpec::from_json_str(text, name.as_ref()) {
            parsed += 1;
            let _ = spec.tensors();
            let _ = spec.param_count();
            let w = Workload {
                batch: 1,
                context: 128,
                decode_steps: 1,
            };
            let _ = estimate(
                &spec,
                DType::BF16,
                EngineProfile::CandleEager,
                Backend::Cuda,
                w,
            );
        }
    }
    assert!(parsed >= 2, "the seed configs must parse");
}

#[test]
fn safetensors_inputs_never_panic() {
    let all = inputs("safetensors_header");
    assert!(!all.is_empty(), "the seeds are missing");
    let spec =
        ModelSpec::from_json_str(vramprobe::TINY_CONFIG, vramprobe::TINY_CONFIG_PATH.as_ref())
            .unwrap();
    for (_, bytes) in all {
        if let Ok(entries) = vramprobe::runner::checkpoint::parse_file(&bytes) {
            let map = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
            let _ = vramprobe::runner::checkpoint::check_against(&spec, &map);
        }
    }
}

#[test]
fn run_files_inputs_never_panic() {
    let all = inputs("run_files");
    assert!(all.len() >= 3, "the seeds are missing");
    let mut plans = 0;
    for (name, bytes) in all {
        vramprobe::store::fuzz_run_files(&bytes);
        // The hand-made seeds (named, not hashed by the fuzzer) are real runs: their run.json
        // gives a checked plan back.
        let info = bytes.split(|&b| b == 0).next().unwrap();
        let seed = !name
            .rsplit('/')
            .next()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_hexdigit());
        if seed {
            let info: vramprobe::store::RunInfo = serde_json::from_slice(info)
                .unwrap_or_else(|e| panic!("{name}: a seed's run.json must read back: {e}"));
            if matches!(info.plan(), Some(Ok(_))) {
                plans += 1;
            }
        }
    }
    assert!(plans >= 2, "the seed runs must give their plans back");
}

#[test]
fn bench_request_inputs_never_panic() {
    let all = inputs("bench_request");
    assert!(all.len() >= 4, "the seeds are missing");
    let mut valid = 0;
    for (_, bytes) in all {
        vramprobe::serve::job::fuzz_request(&bytes);
        if serde_json::from_slice::<vramprobe::serve::job::BenchRequest>(&bytes)
            .is_ok_and(|r| r.plan().is_ok())
        {
            valid += 1;
        }
    }
    assert!(valid >= 3, "the seed requests must be valid plans");
}
