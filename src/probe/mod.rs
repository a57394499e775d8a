//! Memory probes: where a measured number comes from.
//!
//! Every result names its source. On the CPU the one source is [`host::HostAllocProbe`],
//! the process's own counting global allocator: exact current and peak bytes. On CUDA:
//! [`cuda_pool`] (the device's default memory pool, allocator-exact; feature `cuda`) and
//! [`nvml`] (`nvml_process`, what nvidia-smi shows, and `nvml_device`). Without the `cuda`
//! feature, [`cuda_pool`] is a stub whose probe cannot exist, so the code that uses it still
//! compiles (`cuda_pool_stub.rs`).

#[cfg(feature = "cuda")]
pub mod cuda_pool;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_pool_stub.rs"]
pub mod cuda_pool;
pub mod host;
pub mod nvml;

/// A source of memory measurements with a resettable high-water mark.
pub trait MemoryProbe: Send + Sync {
    /// The source's name as it appears in results (`measured` keys, `source`).
    fn name(&self) -> &'static str;
    /// Bytes in use now.
    fn current_bytes(&self) -> u64;
    /// Highest bytes in use since the last [`MemoryProbe::reset_peak`].
    fn peak_bytes(&self) -> u64;
    /// Start a new high-water mark from the current value.
    fn reset_peak(&self);
}

/// What the CUDA pool says at one moment (`cuda_pool::CudaPoolProbe::stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub used: u64,
    pub used_high: u64,
    pub reserved: u64,
    pub reserved_high: u64,
}

/// The CUDA pool's reservation (what it has taken from the driver) as a [`MemoryProbe`]
/// named `cuda_pool_reserved`. Its peak is reset together with the pool's used peak.
pub struct PoolReserved<'a>(pub &'a cuda_pool::CudaPoolProbe);

impl MemoryProbe for PoolReserved<'_> {
    fn name(&self) -> &'static str {
        "cuda_pool_reserved"
    }

    fn current_bytes(&self) -> u64 {
        self.0.stats().reserved
    }

    fn peak_bytes(&self) -> u64 {
        self.0.stats().reserved_high
    }

    fn reset_peak(&self) {
        self.0.reset_peak();
    }
}
