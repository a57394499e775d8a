//! How fast the estimator answers: one estimate (target < 1 us) and a full fit table, every
//! GPU of the catalogue x 6 batch sizes x 8 contexts (target < 10 ms); the chunked engine's
//! replay of Llama-3.1-8B at 131,064 tokens (64 chunks; target < 1 ms); the quantized
//! engine's replay of Llama-3-8B (every layer replayed; target < 1 ms).
//!
//!   cargo bench --bench estimate

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::Path;
use vramprobe::estimate::cuda::CudaOverheads;
use vramprobe::estimate::fit::{process_peak, FitQuery};
use vramprobe::estimate::gpus::CATALOGUE;
use vramprobe::estimate::{estimate, Backend, EngineProfile, Quant, Workload};
use vramprobe::spec::{DType, ModelSpec};

fn benches(c: &mut Criterion) {
    let spec = ModelSpec::from_path(Path::new("models/meta-llama-3-8b-instruct")).expect("config");
    let w = Workload {
        batch: 1,
        context: 4096,
        decode_steps: 8,
    };
    c.bench_function("one estimate (Llama-3-8B, bf16, batch 1 x 4096)", |b| {
        b.iter(|| {
            estimate(
                black_box(&spec),
                DType::BF16,
                EngineProfile::CandleEager,
                Backend::Cuda,
                black_box(w),
            )
        })
    });
    let q = FitQuery {
        spec: &spec,
        dtype: DType::BF16,
        engine: EngineProfile::CandleEager,
        workload: w,
        overheads: CudaOverheads::default(),
        quant: Quant::None,
        kv_dtype: None,
        knobs: Default::default(),
        layout: None,
    };
    let batches = [1u64, 2, 4, 8, 16, 32];
    let contexts = [128u64, 256, 512, 1024, 2048, 4096, 6144, 8184];
    let long = ModelSpec::from_path(Path::new("models/llama-3.1-8b-instruct")).expect("config");
    let w_long = Workload {
        batch: 1,
        context: 131_064,
        decode_steps: 8,
    };
    c.bench_function(
        "one estimate, candle-chunked (Llama-3.1-8B, bf16, batch 1 x 131064)",
        |b| {
            b.iter(|| {
                estimate(
                    black_box(&long),
                    DType::BF16,
                    EngineProfile::CandleChunked,
                    Backend::Cuda,
                    black_box(w_long),
                )
            })
        },
    );
    c.bench_function(
        "one estimate, candle-quantized q4k (Llama-3-8B, batch 1 x 4088)",
        |b| {
            b.iter(|| {
                vramprobe::estimate::estimate_quantized(
                    black_box(&spec),
                    DType::BF16,
                    EngineProfile::CandleQuantized,
                    Backend::Cuda,
                    black_box(Workload { context: 4088, ..w }),
                    Quant::Q4K,
                    None,
                    &Default::default(),
                )
            })
        },
    );
    c.bench_function("fit table (16 GPUs x 6 batches x 8 contexts)", |b| {
        b.iter(|| {
            let mut fits = 0u32;
            for g in CATALOGUE {
                for &batch in &batches {
                    for &context in &contexts {
                        let need = process_peak(
                            &q,
                            Workload {
                                batch,
                                context,
                                decode_steps: 8,
                            },
                        );
                        fits += u32::from(need <= g.usable_bytes());
                    }
                }
            }
            black_box(fits)
        })
    });
}

criterion_group!(estimator, benches);
criterion_main!(estimator);
