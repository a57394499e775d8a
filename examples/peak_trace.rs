//! Development aid: the large allocations alive at the decode peak of one point, beside
//! the estimate's breakdown, to find what an estimate misses.
//!
//! `cargo run --release --features alloc-trace --example peak_trace -- BATCH CONTEXT [STEPS]`
//! (`VRAMPROBE_ENGINE=candle-chunked`, `VRAMPROBE_DTYPE=bf16` and `VRAMPROBE_MAX_POSITION=N`
//! choose the engine, the dtype and the model's position limit).

use vramprobe::estimate::candle_chunked::Knobs;
use vramprobe::estimate::{estimate_with, Backend, EngineProfile, Workload};
use vramprobe::probe::host::{trace, CountingAlloc, HostAllocProbe};
use vramprobe::runner::{Accel, DeviceKind, Runner, WeightsSource};
use vramprobe::spec::{DType, ModelSpec};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let w = Workload {
        batch: args.first().copied().unwrap_or(2),
        context: args.get(1).copied().unwrap_or(128),
        decode_steps: args.get(2).copied().unwrap_or(8),
    };
    let mut spec = ModelSpec::from_json_str(
        vramprobe::TINY_CONFIG,
        std::path::Path::new(vramprobe::TINY_CONFIG_PATH),
    )?;
    let env = |k: &str| std::env::var(k).ok();
    let engine: EngineProfile = env("VRAMPROBE_ENGINE")
        .unwrap_or_else(|| "candle-eager".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    let dtype: DType = env("VRAMPROBE_DTYPE")
        .unwrap_or_else(|| "f32".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    if let Some(m) = env("VRAMPROBE_MAX_POSITION").and_then(|m| m.parse().ok()) {
        spec = spec.with_max_position(m)?;
    }
    let knobs = Knobs::default();
    let probe = HostAllocProbe;
    let weights = WeightsSource::Synthetic { seed: 0 };
    let accel = std::sync::Arc::new(Accel::open(DeviceKind::Cpu)?);
    let runner = Runner::load(&spec, dtype, &weights, engine, knobs, accel, &probe)?;
    trace::enable(true);
    let m = runner.run_point(w, &[&probe])?;
    trace::enable(false);
    let phase = if env("VRAMPROBE_PHASE").as_deref() == Some("prefill") {
        m.prefill
    } else {
        m.decode
    };
    let decode = phase.map_err(|f| anyhow::anyhow!("phase failed: {}", f.message))?;
    // Set aside allocations the size of a weight tensor, one per tensor.
    let mut weight_sizes: Vec<u64> = spec
        .tensors()
        .iter()
        .map(|t| t.numel() * dtype.size_in_bytes())
        .collect();
    let mut rest = Vec::new();
    for size in trace::live_at_peak() {
        match weight_sizes.iter().position(|&x| x == size) {
            Some(i) => drop(weight_sizes.swap_remove(i)),
            None => rest.push(size),
        }
    }
    println!(
        "peak {} bytes ({} above the weights)",
        decode.peak_bytes,
        decode.peak_bytes - runner.weights_bytes
    );
    println!(
        "alive at the peak besides the weights (>= {} bytes): {rest:?}",
        trace::MIN_BYTES
    );
    let e = estimate_with(&spec, dtype, engine, Backend::Cpu, w, &knobs);
    let p = if env("VRAMPROBE_PHASE").as_deref() == Some("prefill") {
        e.prefill
    } else {
        e.decode
    };
    println!(
        "estimated breakdown: {:?} total {} ({} above the weights)",
        p.peak.to_map(),
        p.total_bytes(),
        p.total_bytes() - e.weights_bytes
    );
    Ok(())
}
