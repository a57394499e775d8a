//! Development aid: the large allocations alive at the decode peak of one point, beside
//! the estimate's breakdown, to find what an estimate misses.
//!
//! `cargo run --release --features alloc-trace --example peak_trace -- BATCH CONTEXT [STEPS]`

use vramprobe::estimate::{estimate, Backend, EngineProfile, Workload};
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
    let spec = ModelSpec::from_json_str(
        vramprobe::TINY_CONFIG,
        std::path::Path::new(vramprobe::TINY_CONFIG_PATH),
    )?;
    let probe = HostAllocProbe;
    let weights = WeightsSource::Synthetic { seed: 0 };
    let accel = std::sync::Arc::new(Accel::open(DeviceKind::Cpu)?);
    let runner = Runner::load(&spec, DType::F32, &weights, accel, &probe)?;
    trace::enable(true);
    let m = runner.run_point(w, &[&probe])?;
    trace::enable(false);
    let decode = m
        .decode
        .map_err(|f| anyhow::anyhow!("decode failed: {}", f.message))?;
    // Set aside allocations the size of a weight tensor, one per tensor.
    let mut weight_sizes: Vec<u64> = spec.tensors().iter().map(|t| t.numel() * 4).collect();
    let mut rest = Vec::new();
    for size in trace::live_at_peak() {
        match weight_sizes.iter().position(|&x| x == size) {
            Some(i) => drop(weight_sizes.swap_remove(i)),
            None => rest.push(size),
        }
    }
    println!(
        "decode peak {} bytes ({} above the weights)",
        decode.peak_bytes,
        decode.peak_bytes - runner.weights_bytes
    );
    println!(
        "alive at the peak besides the weights (>= {} bytes): {rest:?}",
        trace::MIN_BYTES
    );
    let e = estimate(
        &spec,
        DType::F32,
        EngineProfile::CandleEager,
        Backend::Cpu,
        w,
    );
    println!("estimated decode breakdown: {:?}", e.decode.peak.to_map());
    Ok(())
}
