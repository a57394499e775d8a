//! `cuda_pool`: the device's default memory pool, allocator-exact on CUDA.
//!
//! cudarc (under candle) allocates with `cuMemAllocAsync` from the device's default pool,
//! so the pool's `USED_MEM_*` attributes count every tensor byte candle holds, and
//! `RESERVED_MEM_*` what the pool has taken from the driver (what NVML sees, in 2 MiB-or-larger
//! chunks). The pool does not see the CUDA context, loaded modules, or library buffers that
//! are allocated with `cuMemAlloc`; those come from NVML.
//!
//! While measuring, the pool's release threshold is set to "never" so that the reservation
//! cannot shrink inside a phase; [`CudaPoolProbe::trim`] hands unused memory back between
//! phases and points. Writing 0 to a `*_HIGH` attribute resets it to the current value.

use crate::probe::{MemoryProbe, PoolStats};
use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaStream};
use std::sync::Arc;

/// The default pool of one device, read after synchronising the stream candle uses.
pub struct CudaPoolProbe {
    device: sys::CUdevice,
    stream: Arc<CudaStream>,
}

impl CudaPoolProbe {
    /// The probe for `stream`'s device. Sets the release threshold to "keep everything".
    ///
    /// # Errors
    /// The driver's error as text.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, String> {
        let device = stream.context().cu_device();
        let p = Self { device, stream };
        p.set(
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            u64::MAX,
        )?;
        Ok(p)
    }

    fn pool(&self) -> Result<sys::CUmemoryPool, String> {
        // SAFETY: `device` came from a live context; the call only writes the out-pointer.
        #[allow(unsafe_code)]
        unsafe {
            result::device::get_default_mem_pool(self.device).map_err(|e| e.to_string())
        }
    }

    fn get(&self, attr: sys::CUmemPool_attribute) -> Result<u64, String> {
        let pool = self.pool()?;
        let mut v: u64 = 0;
        // SAFETY: these attributes are cuuint64_t, and `v` is a valid u64 to write to.
        #[allow(unsafe_code)]
        unsafe {
            result::mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast())
                .map_err(|e| e.to_string())?;
        }
        Ok(v)
    }

    fn set(&self, attr: sys::CUmemPool_attribute, value: u64) -> Result<(), String> {
        let pool = self.pool()?;
        let mut v = value;
        // SAFETY: as in `get`; the driver reads a cuuint64_t.
        #[allow(unsafe_code)]
        unsafe {
            result::mem_pool::set_attribute(pool, attr, (&mut v as *mut u64).cast())
                .map_err(|e| e.to_string())
        }
    }

    fn sync(&self) {
        if let Err(e) = self.stream.synchronize() {
            tracing::warn!(error = %e, "stream synchronize failed");
        }
    }

    /// All four counters, after synchronising.
    pub fn stats(&self) -> PoolStats {
        use sys::CUmemPool_attribute as A;
        self.sync();
        let g = |a| self.get(a).unwrap_or(0);
        PoolStats {
            used: g(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT),
            used_high: g(A::CU_MEMPOOL_ATTR_USED_MEM_HIGH),
            reserved: g(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
            reserved_high: g(A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH),
        }
    }

    /// Free and total device memory as the driver reports them (`cuMemGetInfo`).
    pub fn mem_free_total(&self) -> (u64, u64) {
        self.stream
            .context()
            .mem_get_info()
            .map_or((0, 0), |(f, t)| (f as u64, t as u64))
    }

    /// Return the pool's unused reservation to the driver (after synchronising).
    pub fn trim(&self) {
        self.sync();
        match self.pool() {
            // SAFETY: a valid pool handle; trimming never touches memory in use.
            #[allow(unsafe_code)]
            Ok(pool) => unsafe {
                if let Err(e) = result::mem_pool::trim_to(pool, 0) {
                    tracing::warn!(error = %e, "pool trim failed");
                }
            },
            Err(e) => tracing::warn!(error = %e, "no default pool"),
        }
    }
}

impl MemoryProbe for CudaPoolProbe {
    fn name(&self) -> &'static str {
        "cuda_pool"
    }

    fn current_bytes(&self) -> u64 {
        self.stats().used
    }

    fn peak_bytes(&self) -> u64 {
        self.stats().used_high
    }

    fn reset_peak(&self) {
        use sys::CUmemPool_attribute as A;
        self.sync();
        for a in [
            A::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            if let Err(e) = self.set(a, 0) {
                tracing::warn!(error = %e, "resetting a pool high-water mark failed");
            }
        }
    }
}

/// Device memory taken outside the pool (`cuMemAlloc`) so that the process can use at most
/// a chosen amount: `bench --memory-limit` measures as if on a smaller card. NVML counts it
/// (the bench subtracts it); the pool does not.
pub struct Ballast {
    ptr: sys::CUdeviceptr,
    bytes: u64,
    stream: Arc<CudaStream>,
}

impl Ballast {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl CudaPoolProbe {
    /// Take `bytes` of device memory outside the pool.
    ///
    /// # Errors
    /// The driver's error as text (e.g. more than is free).
    pub fn ballast(&self, bytes: u64) -> Result<Ballast, String> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| e.to_string())?;
        // SAFETY: the context is bound to this thread; the pointer is freed once, in Drop.
        #[allow(unsafe_code)]
        let ptr = unsafe { result::malloc_sync(bytes as usize).map_err(|e| e.to_string())? };
        Ok(Ballast {
            ptr,
            bytes,
            stream: self.stream.clone(),
        })
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        let _ = self.stream.context().bind_to_thread();
        // SAFETY: allocated by `ballast` with cuMemAlloc and not freed elsewhere.
        #[allow(unsafe_code)]
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}
