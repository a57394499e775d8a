//! The estimator stays pure arithmetic: src/estimate and src/spec import no runtime crate.

use super::root;

#[test]
fn estimate_and_spec_import_no_runtime_crates() {
    let forbidden = [
        "candle",
        "tokio",
        "axum",
        "nvml_wrapper",
        "hf_hub",
        "cudarc",
        "rayon",
        "gemm",
    ];
    let mut offenders = Vec::new();
    for dir in ["src/estimate", "src/spec"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let t = line.trim_start();
                for f in forbidden {
                    if t.starts_with(&format!("use {f}"))
                        || t.contains(&format!("{f}::")) && !t.starts_with("//")
                    {
                        offenders.push(format!("{}:{}: {line}", path.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "runtime imports in the pure estimator:\n{}",
        offenders.join("\n")
    );
}
