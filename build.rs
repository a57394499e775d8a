//! Records the locked versions of the crates whose behaviour the estimate models, so
//! every run says which candle it measured, and the git commit the binary was built from.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (krate, var) in [
        ("candle-core", "VRAMPROBE_CANDLE_VERSION"),
        (
            "candle-transformers",
            "VRAMPROBE_CANDLE_TRANSFORMERS_VERSION",
        ),
    ] {
        let needle = format!("name = \"{krate}\"\nversion = \"");
        let version = lock
            .find(&needle)
            .map(|i| &lock[i + needle.len()..])
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("unknown");
        println!("cargo:rustc-env={var}={version}");
    }
    // The commit the binary was built from ("unknown" outside a git checkout).
    for watched in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VRAMPROBE_GIT_COMMIT={commit}");
    committed_calibrations();
}

/// Every `calibrations/*.json` (the CUDA terms measured on one GPU model and driver), compiled
/// in as text: `estimate` and `fit` take a GPU's terms from its committed calibration.
fn committed_calibrations() {
    println!("cargo:rerun-if-changed=calibrations");
    let dir = std::path::Path::new("calibrations");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut code = String::from("/// `(file name, text)` of every committed calibration.\n");
    code.push_str("pub const COMMITTED_FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        let abs = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
        println!("cargo:rerun-if-changed={}", f.display());
    }
    code.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    if let Err(e) = std::fs::write(out.join("calibrations.rs"), code) {
        println!("cargo:warning=calibrations.rs not written: {e}");
    }
}
