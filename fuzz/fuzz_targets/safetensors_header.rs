//! The safetensors header path: any file bytes give the tensors or an error naming what is
//! wrong, never a panic; what parses is checked against the built-in model's config.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = vramprobe::runner::checkpoint::parse_file(data) {
        let spec = vramprobe::spec::ModelSpec::from_json_str(
            vramprobe::TINY_CONFIG,
            std::path::Path::new(vramprobe::TINY_CONFIG_PATH),
        )
        .expect("the built-in config parses");
        let map = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
        let _ = vramprobe::runner::checkpoint::check_against(&spec, &map);
    }
});
