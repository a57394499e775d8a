//! Development aid: what one candle CPU matmul allocates besides its output, for the shapes
//! of the CPU models (the source of the gemm terms in `estimate::candle_chunked`).
//!
//! `cargo run --release --example mm_probe`

use candle_core::{DType, Device, Module, Tensor};
use vramprobe::probe::host::{CountingAlloc, HostAllocProbe};
use vramprobe::probe::MemoryProbe;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Three calls of `f`: the bytes each allocated at its peak beyond its output.
fn transient(name: &str, f: impl Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<()> {
    let p = HostAllocProbe;
    let mut r = vec![];
    for _ in 0..3 {
        let before = p.current_bytes();
        p.reset_peak();
        let t = f()?;
        let out = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        r.push(p.peak_bytes().saturating_sub(before + out));
    }
    println!("{name}: transient bytes {r:?}");
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    // gemm's per-thread slabs first, as the runner does.
    rayon::broadcast(|_| gemm_common::gemm::L2_SLAB.with(|slab| drop(slab.borrow())));
    gemm_common::gemm::L2_SLAB.with(|slab| drop(slab.borrow()));
    for (rows, i, o) in [
        (2usize, 256usize, 768usize),
        (128, 256, 768),
        (1024, 256, 768),
        (128, 768, 256),
        (128, 256, 256),
        (128, 256, 64),
        (128, 256, 8192),
        (1, 256, 8192),
        (4, 256, 8192),
    ] {
        let x = Tensor::zeros((1, rows, i), DType::F32, &d)?;
        let lin = candle_nn::Linear::new(Tensor::zeros((o, i), DType::F32, &d)?, None);
        transient(&format!("linear {rows}x{i}->{o}"), || lin.forward(&x))?;
    }
    for (rows, kv) in [(4usize, 1032usize), (128, 136), (512, 520), (256, 4096)] {
        let q = Tensor::zeros((1, 2, rows, 32), DType::F32, &d)?;
        let k = Tensor::zeros((1, 2, kv + 8, 32), DType::F32, &d)?.narrow(2, 0, kv)?;
        transient(&format!("scores {rows}x{kv}"), || q.matmul(&k.t()?))?;
        let pr = Tensor::zeros((1, 2, rows, kv), DType::F32, &d)?;
        transient(&format!("probs x v {rows}x{kv}"), || pr.matmul(&k))?;
    }
    Ok(())
}
