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
    let mut files = Vec::new();
    let mut dirs = vec![root().join("src/estimate"), root().join("src/spec")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(
        files.iter().any(|f| f.ends_with("candle_train/sim.rs")),
        "the walk reaches subdirectories"
    );
    for path in files {
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
    assert!(
        offenders.is_empty(),
        "runtime imports in the pure estimator:\n{}",
        offenders.join("\n")
    );
}
