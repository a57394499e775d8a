//! `cuda_pool` in a build without the `cuda` feature: the same types and methods as the
//! real probe (`cuda_pool.rs`), none of which can be constructed, so code above (the GPU
//! session of `bench`) compiles and is type-checked on every build without a `cfg` of its
//! own. Opening a CUDA device fails first, with "built without CUDA"
//! (`runner::Accel::open`). The pattern is candle's `dummy_cuda_backend.rs`.

use crate::probe::{MemoryProbe, PoolStats};
use std::convert::Infallible;

/// The default pool of one device: never present in this build.
pub struct CudaPoolProbe(Infallible);

impl CudaPoolProbe {
    pub fn stats(&self) -> PoolStats {
        match self.0 {}
    }

    pub fn mem_free_total(&self) -> (u64, u64) {
        match self.0 {}
    }

    pub fn trim(&self) {
        match self.0 {}
    }

    /// # Errors
    /// Never returns: no pool exists in this build.
    pub fn ballast(&self, _bytes: u64) -> Result<Ballast, String> {
        match self.0 {}
    }
}

impl MemoryProbe for CudaPoolProbe {
    fn name(&self) -> &'static str {
        match self.0 {}
    }

    fn current_bytes(&self) -> u64 {
        match self.0 {}
    }

    fn peak_bytes(&self) -> u64 {
        match self.0 {}
    }

    fn reset_peak(&self) {
        match self.0 {}
    }
}

/// Device memory taken outside the pool (`bench --memory-limit`): never present here.
pub struct Ballast(Infallible);

impl Ballast {
    pub fn bytes(&self) -> u64 {
        match self.0 {}
    }
}
