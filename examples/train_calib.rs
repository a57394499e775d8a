//! Calibration: simulated vs measured training phases on the CPU (development aid).
use std::sync::Arc;
use vramprobe::estimate::candle_train::{self, LoraSetup, TrainPhase};
use vramprobe::probe::host::HostAllocProbe;
use vramprobe::probe::MemoryProbe;
use vramprobe::runner::train::TrainRunner;
use vramprobe::runner::{Accel, DeviceKind, WeightsSource};
use vramprobe::spec::{DType, ModelSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let lora = args.get(1).is_some_and(|a| a == "lora").then(|| LoraSetup {
        rank: 8,
        targets: vec![
            vramprobe::estimate::train::Target::Q,
            vramprobe::estimate::train::Target::V,
        ],
    });
    let spec = ModelSpec::from_path(std::path::Path::new("models/vramprobe-tiny-llama"))?;
    let probe = HostAllocProbe;
    let accel = Arc::new(Accel::open(DeviceKind::Cpu)?);
    let r = TrainRunner::load(
        &spec,
        DType::F32,
        &WeightsSource::Synthetic { seed: 0 },
        lora.as_ref(),
        accel,
        &probe,
    )?;
    println!(
        "weights {} residue {}",
        r.weights_bytes, r.warmup_residue_bytes
    );
    for (b, s) in [(1, 64), (1, 128), (1, 256), (2, 256), (1, 512), (4, 256)] {
        let m = r.run_point(b, s, &[&probe as &dyn MemoryProbe])?;
        let est = candle_train::estimate(&spec, DType::F32, true, b, s, lora.as_ref());
        for (ph, res) in &m.phases {
            let meas = res.as_ref().map(|p| p.peak_bytes).unwrap_or(0);
            let e = est.phase(*ph).total();
            println!(
                "b{b} s{s} {:<22} meas {:>12} est {:>12} err {:+.2}%  {:?}",
                ph.as_str(),
                meas,
                e,
                (e as f64 - meas as f64) / meas as f64 * 100.0,
                est.phase(*ph).to_map()
            );
        }
        let _ = TrainPhase::ALL;
        println!("losses {:?}", m.losses);
    }
    Ok(())
}
