//! Records the locked versions of the crates whose behaviour the estimate models, so
//! every run says which candle it measured.

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
}
