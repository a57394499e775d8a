//! vramprobe: how much memory does this LLM really need, at this batch and context?
//!
//! It estimates from a Hugging Face `config.json` and checks the estimate against a real
//! measurement, point by point. The modules follow the data flow, and nothing imports
//! "upward":
//!
//! ```text
//! config.json --> spec (ModelSpec, DType)          pure, reads one file
//!            --> estimate (bytes per component)    pure arithmetic, no candle
//!            --> plan (grid of Workload)
//!            --> runner (candle forward passes)    the only module importing candle
//!              + probe (MemoryProbe: counting allocator)
//!            --> store (run.json + points.jsonl, append-only)
//!            --> report (tables)
//!            --> serve (daemon: /metrics from NVML and stored runs)
//! ```
//!
//! The estimate alone, for Meta-Llama-3-8B-Instruct in BF16:
//!
//! ```
//! use vramprobe::estimate::{estimate, Backend, EngineProfile, Workload};
//! use vramprobe::spec::{DType, ModelSpec};
//! let spec = ModelSpec::from_path("models/meta-llama-3-8b-instruct".as_ref())?;
//! let w = Workload { batch: 1, context: 8192, decode_steps: 8 };
//! let e = estimate(&spec, DType::BF16, EngineProfile::CandleEager, Backend::Cuda, w);
//! assert_eq!(e.params, 8_030_261_248);
//! assert_eq!(e.weights_bytes, 16_060_522_496);
//! assert_eq!(e.kv_cache_bytes_per_token, 131_072);
//! assert!(e.total_bytes() > e.weights_bytes + 8192 * 131_072);
//! # Ok::<(), vramprobe::spec::SpecError>(())
//! ```

/// `as_str`, `Display` and `FromStr` for a field-less enum, from one list of its names (the
/// names results and the command line use).
macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The name as stored and shown.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)*
                    _ => Err(format!("\"{s}\": use {}", [$($s),*].join(", "))),
                }
            }
        }
    };
}

pub mod bench;
pub mod cli;
pub mod estimate;
pub mod hub;
pub mod model;
pub mod plan;
pub mod probe;
pub mod report;
pub mod runner;
pub mod serve;
pub mod spec;
pub mod store;

/// The built-in CPU default model's config.json (also in `models/vramprobe-tiny-llama/`).
pub const TINY_CONFIG: &str = include_str!("../models/vramprobe-tiny-llama/config.json");
/// Where the built-in config lives in the source tree, used to name it in results.
pub const TINY_CONFIG_PATH: &str = "models/vramprobe-tiny-llama/config.json";
