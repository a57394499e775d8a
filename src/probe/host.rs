//! A counting global allocator: every heap byte of this process, exactly.
//!
//! It wraps the system allocator and keeps two atomics, current and peak. A binary that
//! measures on the CPU installs it as its `#[global_allocator]` (the library imposes nothing
//! on the crates that link it), so candle's CPU tensors (plain `Vec`s) are counted as they
//! are allocated and freed, on every thread:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: vramprobe::probe::host::CountingAlloc = vramprobe::probe::host::CountingAlloc;
//! ```
//!
//! [`HostAllocProbe::installed`] says whether it was.
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait; each fn only forwards to System.

use super::MemoryProbe;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counted.
pub struct CountingAlloc;

#[inline]
fn grew(bytes: u64) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    let _old = PEAK.fetch_max(now, Ordering::Relaxed);
    #[cfg(feature = "alloc-trace")]
    if _old < now {
        trace::on_peak();
    }
}

#[inline]
fn shrank(bytes: u64) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters never affect what is returned.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            #[cfg(feature = "alloc-trace")]
            trace::track(p, layout.size());
            grew(layout.size() as u64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            #[cfg(feature = "alloc-trace")]
            trace::track(p, layout.size());
            grew(layout.size() as u64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        #[cfg(feature = "alloc-trace")]
        trace::untrack(ptr, layout.size());
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size() as u64);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        #[cfg(feature = "alloc-trace")]
        trace::untrack(ptr, layout.size());
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        #[cfg(feature = "alloc-trace")]
        if !p.is_null() {
            trace::track(p, new_size);
        }
        if !p.is_null() {
            let old = layout.size() as u64;
            let new = new_size as u64;
            if new >= old {
                grew(new - old);
            } else {
                shrank(old - new);
            }
        }
        p
    }
}

/// Development aid (feature `alloc-trace`): the sizes of the large allocations alive at
/// the last peak, to see what an estimate misses. Races between threads can drop an
/// entry; it is a diagnostic, never a measurement.
#[cfg(feature = "alloc-trace")]
pub mod trace {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    const SLOTS: usize = 4096;
    /// Allocations of at least this many bytes are tracked.
    pub const MIN_BYTES: usize = 8 << 10;
    static ON: AtomicBool = AtomicBool::new(false);
    static PTRS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static SIZES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
    static SNAP: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

    pub fn enable(on: bool) {
        ON.store(on, Ordering::SeqCst);
    }

    pub(super) fn track(p: *mut u8, size: usize) {
        if size < MIN_BYTES {
            return;
        }
        for i in 0..SLOTS {
            if PTRS[i]
                .compare_exchange(0, p as usize, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                SIZES[i].store(size as u64, Ordering::Release);
                return;
            }
        }
    }

    pub(super) fn untrack(p: *mut u8, size: usize) {
        if size < MIN_BYTES {
            return;
        }
        for i in 0..SLOTS {
            if PTRS[i].load(Ordering::Acquire) == p as usize {
                SIZES[i].store(0, Ordering::Release);
                PTRS[i].store(0, Ordering::Release);
                return;
            }
        }
    }

    pub(super) fn on_peak() {
        if !ON.load(Ordering::Relaxed) {
            return;
        }
        for i in 0..SLOTS {
            SNAP[i].store(SIZES[i].load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Sizes alive at the last peak, largest first.
    pub fn live_at_peak() -> Vec<u64> {
        let mut v: Vec<u64> = SNAP
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s > 0)
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}

// The library's own unit tests measure with it too.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: CountingAlloc = CountingAlloc;

/// The counting allocator seen as a [`MemoryProbe`], named `host_alloc`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostAllocProbe;

impl HostAllocProbe {
    /// Whether [`CountingAlloc`] is this process's global allocator: once it is, every
    /// allocation since start-up (the arguments, the environment) has been counted.
    pub fn installed() -> bool {
        PEAK.load(Ordering::Relaxed) > 0
    }
}

impl MemoryProbe for HostAllocProbe {
    fn name(&self) -> &'static str {
        "host_alloc"
    }

    fn current_bytes(&self) -> u64 {
        CURRENT.load(Ordering::Relaxed)
    }

    fn peak_bytes(&self) -> u64 {
        PEAK.load(Ordering::Relaxed)
    }

    fn reset_peak(&self) {
        PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The host memory this process can still take, and what sets that limit: the smallest of
/// the kernel's `MemAvailable`, the cgroup's `memory.max` less its `memory.current` (cgroup
/// v2), and the address-space limit (`ulimit -v`, `RLIMIT_AS`) less the process's virtual
/// size. None where none of them can be read.
pub fn available_bytes() -> Option<(u64, &'static str)> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let kib_field = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let mut limits: Vec<(u64, &'static str)> = Vec::new();
    if let Some(m) = read("/proc/meminfo").and_then(|t| kib_field(&t, "MemAvailable:")) {
        limits.push((m, "the host's available memory (MemAvailable)"));
    }
    let cgroup =
        |f: &str| read(&format!("/sys/fs/cgroup/{f}")).and_then(|t| t.trim().parse::<u64>().ok());
    if let (Some(max), Some(cur)) = (cgroup("memory.max"), cgroup("memory.current")) {
        limits.push((max.saturating_sub(cur), "the cgroup's memory.max"));
    }
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_AS) {
        if soft != nix::sys::resource::RLIM_INFINITY {
            let used = read("/proc/self/status")
                .and_then(|t| kib_field(&t, "VmSize:"))
                .unwrap_or(0);
            limits.push((
                soft.saturating_sub(used),
                "the address-space limit (ulimit -v)",
            ));
        }
    }
    limits.into_iter().min_by_key(|&(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_large_allocation_and_its_free() {
        assert!(HostAllocProbe::installed());
        // Other test threads allocate and free too (the training simulator's tests move
        // tens of MiB): an attempt disturbed by them is retried; a broken counter fails all.
        let p = HostAllocProbe;
        let attempt = || {
            p.reset_peak();
            let before = p.current_bytes();
            let v: Vec<u8> = vec![1; 64 << 20];
            let during = p.current_bytes();
            let grew = during >= before + (64 << 20) - (1 << 20);
            drop(v);
            let peaked = p.peak_bytes() >= before + (64 << 20) - (1 << 20);
            let freed = p.current_bytes() < during - (32 << 20);
            grew && peaked && freed
        };
        assert!((0..50).any(|_| attempt()), "no clean attempt in 50");
    }

    #[test]
    fn available_memory_is_read_on_linux() {
        let (bytes, source) = available_bytes().expect("/proc/meminfo on Linux");
        assert!(bytes > 0, "{source}");
    }
}
