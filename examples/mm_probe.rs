use candle_core::{DType, Device, Module, Tensor};
use vramprobe::probe::host::{CountingAlloc, HostAllocProbe};
use vramprobe::probe::MemoryProbe;
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;
fn peak<F: Fn() -> Tensor>(name: &str, f: F) {
    let p = HostAllocProbe;
    let mut r = vec![];
    for _ in 0..3 {
        let before = p.current_bytes();
        p.reset_peak();
        let t = f();
        let out = t.elem_count() * t.dtype().size_in_bytes();
        r.push(p.peak_bytes() - before - out as u64);
    }
    println!("{name}: transient {r:?}");
}
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    rayon::broadcast(|_| gemm_common::gemm::L2_SLAB.with(|slab| drop(slab.borrow())));
    gemm_common::gemm::L2_SLAB.with(|slab| drop(slab.borrow()));
    for &(rows, i, o) in &[
        (2usize, 256usize, 768usize),
        (16, 256, 768),
        (128, 256, 768),
        (512, 256, 768),
        (1024, 256, 768),
        (128, 768, 256),
        (128, 256, 8192),
        (128, 256, 64),
        (128, 256, 256),
        (1, 256, 8192),
        (4, 256, 8192),
    ] {
        let x = Tensor::zeros((1, rows, i), DType::F32, &d)?;
        let lin = candle_nn::Linear::new(Tensor::zeros((o, i), DType::F32, &d)?, None);
        peak(&format!("linear {rows}x{i}->{o}"), || {
            lin.forward(&x).unwrap()
        });
    }
    for &(rows, kv, cap) in &[
        (4usize, 1032usize, 1032usize),
        (128, 136, 136),
        (512, 520, 520),
        (1024, 1032, 1032),
        (8, 2048, 2048),
        (256, 4096, 4096),
    ] {
        let q = Tensor::zeros((1, 2, rows, 32), DType::F32, &d)?;
        let k = Tensor::zeros((1, 2, cap, 32), DType::F32, &d)?;
        let kn = k.narrow(2, 0, kv)?;
        peak(&format!("scores {rows}x{kv}"), || {
            q.matmul(&kn.t().unwrap()).unwrap()
        });
        let pr = Tensor::zeros((1, 2, rows, kv), DType::F32, &d)?;
        peak(&format!("pv {rows}x{kv}"), || pr.matmul(&kn).unwrap());
    }
    Ok(())
}
