//! config.json parsing: any bytes give a ModelSpec or an error naming the file and field,
//! never a panic (overflowing sizes, heads that do not divide, absurd values included).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = std::path::Path::new("fuzz/config.json");
        if let Ok(spec) = vramprobe::spec::ModelSpec::from_json_str(text, path) {
            // A spec that parsed must be usable: its inventory and estimate must not panic.
            let _ = spec.tensors();
            let _ = spec.param_count();
            let w = vramprobe::estimate::Workload {
                batch: 1,
                context: 128,
                decode_steps: 1,
            };
            let _ = vramprobe::estimate::estimate(
                &spec,
                vramprobe::spec::DType::BF16,
                vramprobe::estimate::EngineProfile::CandleEager,
                vramprobe::estimate::Backend::Cuda,
                w,
            );
        }
    }
});
