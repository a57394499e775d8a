//! NVML: what `nvidia-smi` shows. Per-process memory (`nvml_process`, the primary source on
//! CUDA) and device memory (`nvml_device`: used/free/reserved/total, v2 semantics).
//!
//! NVML calls take a driver lock (the process list costs milliseconds), so the background
//! [`Sampler`] polls at tens of Hz, not kHz. Peaks between two samples can be missed by the
//! sampler alone; the bench therefore also reads NVML once right after each phase while the
//! memory pool still holds its reservation (see `runner`), and keeps the larger value.
//!
//! This is the only module that imports nvml-wrapper. It builds everywhere: the library
//! `libnvidia-ml.so.1` is loaded at run time, and its absence is [`NvmlError::Unavailable`].

use crate::probe::MemoryProbe;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Why NVML gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    /// The library is missing or the driver does not answer (no GPU, a container without the
    /// driver mounted, a driver/library mismatch).
    #[error("NVML not available: {0}")]
    Unavailable(String),
    /// NVML answered with an error.
    #[error("NVML: {0}")]
    Call(String),
}

fn call(e: nvml_wrapper::error::NvmlError) -> NvmlError {
    NvmlError::Call(e.to_string())
}

/// Device memory, v2 semantics: `used + free + reserved = total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemory {
    pub used: u64,
    pub free: u64,
    pub reserved: u64,
    pub total: u64,
}

/// Identity of the GPU and its software.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub driver_version: String,
    /// The CUDA version the driver supports, as "13.0".
    pub cuda_driver_version: String,
    pub memory_total_bytes: u64,
}

/// How our process was found in NVML's process list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "how", content = "pid")]
pub enum PidMatch {
    /// Our own PID is listed.
    Own(u32),
    /// Our PID is not listed (a container without the host PID namespace): the one PID that
    /// appeared after our CUDA context was created is taken as ours.
    NewPid(u32),
    /// Not (yet) found.
    NotFound,
}

/// One GPU's NVML handle.
pub struct Gpu {
    nvml: Nvml,
    index: u32,
}

impl Gpu {
    /// Open GPU `index`.
    ///
    /// # Errors
    /// [`NvmlError::Unavailable`] without NVML or without that GPU.
    pub fn open(index: u32) -> Result<Self, NvmlError> {
        let nvml = Nvml::init().map_err(|e| NvmlError::Unavailable(e.to_string()))?;
        nvml.device_by_index(index)
            .map_err(|e| NvmlError::Unavailable(format!("GPU {index}: {e}")))?;
        Ok(Self { nvml, index })
    }

    fn device(&self) -> Result<nvml_wrapper::Device<'_>, NvmlError> {
        self.nvml.device_by_index(self.index).map_err(call)
    }

    /// Name, UUID, driver and CUDA versions, total memory.
    ///
    /// # Errors
    /// [`NvmlError::Call`].
    pub fn info(&self) -> Result<GpuInfo, NvmlError> {
        info_of(&self.nvml, &self.device()?, self.index)
    }

    /// Device memory now.
    ///
    /// # Errors
    /// [`NvmlError::Call`].
    pub fn memory(&self) -> Result<DeviceMemory, NvmlError> {
        memory_of(&self.device()?)
    }

    /// Compute processes on this GPU and their memory (`None` where NVML cannot say).
    ///
    /// # Errors
    /// [`NvmlError::Call`].
    pub fn processes(&self) -> Result<Vec<(u32, Option<u64>)>, NvmlError> {
        processes_of(&self.device()?)
    }
}

fn info_of(nvml: &Nvml, d: &nvml_wrapper::Device<'_>, index: u32) -> Result<GpuInfo, NvmlError> {
    let cuda = nvml.sys_cuda_driver_version().map_err(call)?;
    Ok(GpuInfo {
        index,
        name: d.name().map_err(call)?,
        uuid: d.uuid().map_err(call)?,
        driver_version: nvml.sys_driver_version().map_err(call)?,
        cuda_driver_version: format!("{}.{}", cuda / 1000, (cuda % 1000) / 10),
        memory_total_bytes: d.memory_info().map_err(call)?.total,
    })
}

fn memory_of(d: &nvml_wrapper::Device<'_>) -> Result<DeviceMemory, NvmlError> {
    let m = d.memory_info().map_err(call)?;
    Ok(DeviceMemory {
        used: m.used,
        free: m.free,
        reserved: m.reserved,
        total: m.total,
    })
}

fn processes_of(d: &nvml_wrapper::Device<'_>) -> Result<Vec<(u32, Option<u64>)>, NvmlError> {
    Ok(d.running_compute_processes()
        .map_err(call)?
        .into_iter()
        .map(|p| {
            let bytes = match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            };
            (p.pid, bytes)
        })
        .collect())
}

/// One GPU as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub info: GpuInfo,
    pub memory: DeviceMemory,
    /// (pid, bytes) of compute processes, when asked for.
    #[serde(default)]
    pub processes: Vec<(u32, Option<u64>)>,
    /// MIG instances, when MIG mode is on (their processes are listed there, not above).
    #[serde(default)]
    pub mig: Vec<MigSnapshot>,
    /// ECC and page-retirement counters (each `None` where the GPU does not support it).
    #[serde(default)]
    pub health: MemoryHealth,
}

/// One MIG instance of a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigSnapshot {
    /// The MIG device's index on its parent GPU.
    pub index: u32,
    pub uuid: String,
    pub memory: DeviceMemory,
    #[serde(default)]
    pub processes: Vec<(u32, Option<u64>)>,
}

/// Device memory health: ECC error counts, retired pages, remapped rows. A field is `None`
/// where NVML does not support it on this GPU (exported as absent, not as zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHealth {
    pub ecc_corrected_volatile: Option<u64>,
    pub ecc_uncorrected_volatile: Option<u64>,
    pub ecc_corrected_aggregate: Option<u64>,
    pub ecc_uncorrected_aggregate: Option<u64>,
    /// Pages retired after multiple single-bit errors, and after a double-bit error
    /// (GPUs before Ampere).
    pub retired_pages_single_bit: Option<u64>,
    pub retired_pages_double_bit: Option<u64>,
    pub retired_pages_pending: Option<bool>,
    /// Rows remapped after correctable and uncorrectable errors, a remap pending a GPU
    /// reset, a remap that failed (Ampere and later).
    pub remapped_rows_correctable: Option<u64>,
    pub remapped_rows_uncorrectable: Option<u64>,
    pub remapped_rows_pending: Option<bool>,
    pub remapped_rows_failed: Option<bool>,
}

/// Rows remapped after correctable and uncorrectable errors, a remap pending, a remap failed
/// (`nvmlDeviceGetRemappedRows`, Ampere and later); `None` where NVML does not support it.
/// nvml-wrapper 0.13 does not wrap this call: it is made through the symbol table nvml-wrapper
/// loaded (propose upstream; then this becomes `d.remapped_rows()`).
#[allow(unsafe_code)]
fn remapped_rows(nvml: &Nvml, d: &nvml_wrapper::Device<'_>) -> Option<(u64, u64, bool, bool)> {
    let f = nvml.lib().nvmlDeviceGetRemappedRows.as_ref().ok()?;
    let (mut corr, mut unc, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: `f` is the driver's nvmlDeviceGetRemappedRows, resolved by nvml-wrapper from the
    // library that `nvml` keeps loaded (and initialised) for as long as it lives; `d` is a
    // device handle of that same library, alive for this call; the four out-parameters are
    // distinct local `c_uint`s, as the NVML API requires. Nothing is retained after it returns.
    let code = unsafe { f(d.handle(), &mut corr, &mut unc, &mut pending, &mut failed) };
    (code == 0).then_some((u64::from(corr), u64::from(unc), pending != 0, failed != 0))
}

fn health_of(nvml: &Nvml, d: &nvml_wrapper::Device<'_>) -> MemoryHealth {
    use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, RetirementCause};
    let ecc = |e, c| d.total_ecc_errors(e, c).ok();
    let retired = |c| d.retired_pages(c).ok().map(|v| v.len() as u64);
    let rows = remapped_rows(nvml, d);
    MemoryHealth {
        remapped_rows_correctable: rows.map(|r| r.0),
        remapped_rows_uncorrectable: rows.map(|r| r.1),
        remapped_rows_pending: rows.map(|r| r.2),
        remapped_rows_failed: rows.map(|r| r.3),
        ecc_corrected_volatile: ecc(MemoryError::Corrected, EccCounter::Volatile),
        ecc_uncorrected_volatile: ecc(MemoryError::Uncorrected, EccCounter::Volatile),
        ecc_corrected_aggregate: ecc(MemoryError::Corrected, EccCounter::Aggregate),
        ecc_uncorrected_aggregate: ecc(MemoryError::Uncorrected, EccCounter::Aggregate),
        retired_pages_single_bit: retired(RetirementCause::MultipleSingleBitEccErrors),
        retired_pages_double_bit: retired(RetirementCause::DoubleBitEccError),
        retired_pages_pending: d.are_pages_pending_retired().ok(),
    }
}

/// The MIG instances of a GPU in MIG mode (empty otherwise, or where NVML cannot say).
fn mig_of(d: &nvml_wrapper::Device<'_>, processes: bool) -> Result<Vec<MigSnapshot>, NvmlError> {
    let on = d.mig_mode().is_ok_and(|m| m.current == 1);
    if !on {
        return Ok(Vec::new());
    }
    let slots = d.mig_device_count().map_err(call)?;
    let mut out = Vec::new();
    for i in 0..slots {
        // Empty slots answer NotFound.
        let Ok(m) = d.mig_device_by_index(i) else {
            continue;
        };
        out.push(MigSnapshot {
            index: i,
            uuid: m.uuid().map_err(call)?,
            memory: memory_of(&m)?,
            processes: if processes {
                processes_of(&m)?
            } else {
                Vec::new()
            },
        });
    }
    Ok(out)
}

/// Every GPU of the machine through one NVML handle (the daemon's view).
pub struct Fleet {
    nvml: Nvml,
}

impl Fleet {
    /// Initialise NVML.
    ///
    /// # Errors
    /// [`NvmlError::Unavailable`] without NVML.
    pub fn open() -> Result<Self, NvmlError> {
        Ok(Self {
            nvml: Nvml::init().map_err(|e| NvmlError::Unavailable(e.to_string()))?,
        })
    }

    /// Every device's identity and memory now, and its processes when `processes`.
    ///
    /// # Errors
    /// [`NvmlError::Call`] when any call fails (the snapshot is all or nothing).
    pub fn snapshot(&self, processes: bool) -> Result<Vec<DeviceSnapshot>, NvmlError> {
        let n = self.nvml.device_count().map_err(call)?;
        (0..n)
            .map(|i| {
                let d = self.nvml.device_by_index(i).map_err(call)?;
                let mig = mig_of(&d, processes)?;
                Ok(DeviceSnapshot {
                    info: info_of(&self.nvml, &d, i)?,
                    memory: memory_of(&d)?,
                    // In MIG mode the processes are listed per instance.
                    processes: if processes && mig.is_empty() {
                        processes_of(&d)?
                    } else {
                        Vec::new()
                    },
                    mig,
                    health: health_of(&self.nvml, &d),
                })
            })
            .collect()
    }
}

/// Find our process in a process list: our PID, else the one PID not in `before`.
pub fn match_pid(list: &[(u32, Option<u64>)], own: u32, before: &BTreeSet<u32>) -> PidMatch {
    if list.iter().any(|(p, _)| *p == own) {
        return PidMatch::Own(own);
    }
    let new: Vec<u32> = list
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !before.contains(p))
        .collect();
    match new.as_slice() {
        [one] => PidMatch::NewPid(*one),
        _ => PidMatch::NotFound,
    }
}

#[derive(Default)]
struct Shared {
    process_now: AtomicU64,
    process_peak: AtomicU64,
    device_now: AtomicU64,
    device_peak: AtomicU64,
    samples: AtomicU64,
    stop: AtomicBool,
    pid: Mutex<Option<PidMatch>>,
}

/// A background thread polling NVML at a fixed rate and keeping the peaks of this process's
/// memory and of the device's used memory.
pub struct Sampler {
    shared: Arc<Shared>,
    gpu: Arc<Mutex<Gpu>>,
    pids_before: BTreeSet<u32>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Start polling `gpu` at `hz` (clamped to 1..=100). `pids_before` are the compute PIDs
    /// listed before our CUDA context existed (for the container case of [`match_pid`]).
    pub fn start(gpu: Gpu, hz: u32, pids_before: BTreeSet<u32>) -> Self {
        let shared = Arc::new(Shared::default());
        let gpu = Arc::new(Mutex::new(gpu));
        let period = Duration::from_secs_f64(1.0 / f64::from(hz.clamp(1, 100)));
        let (s, g, before) = (shared.clone(), gpu.clone(), pids_before.clone());
        let handle = std::thread::Builder::new()
            .name("vramprobe-nvml".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    if let Ok(gpu) = g.lock() {
                        sample_once(&gpu, &s, &before);
                    }
                    std::thread::sleep(period);
                }
            })
            .ok();
        Self {
            shared,
            gpu,
            pids_before,
            handle,
        }
    }

    /// Take one sample now (synchronously) and return (process bytes, device used bytes).
    pub fn sample_now(&self) -> (u64, u64) {
        if let Ok(gpu) = self.gpu.lock() {
            sample_once(&gpu, &self.shared, &self.pids_before);
        }
        (
            self.shared.process_now.load(Ordering::Relaxed),
            self.shared.device_now.load(Ordering::Relaxed),
        )
    }

    /// How our process was found in the last sample.
    pub fn pid_match(&self) -> PidMatch {
        self.shared
            .pid
            .lock()
            .ok()
            .and_then(|p| *p)
            .unwrap_or(PidMatch::NotFound)
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u64 {
        self.shared.samples.load(Ordering::Relaxed)
    }

    /// Device memory now.
    ///
    /// # Errors
    /// [`NvmlError::Call`], or Unavailable if the lock was poisoned.
    pub fn memory(&self) -> Result<DeviceMemory, NvmlError> {
        self.gpu
            .lock()
            .map_err(|_| NvmlError::Unavailable("sampler lock poisoned".into()))?
            .memory()
    }

    /// The per-process view as a [`MemoryProbe`] named `nvml_process`.
    pub fn process_probe(&self) -> NvmlProbe<'_> {
        NvmlProbe {
            sampler: self,
            device: false,
        }
    }

    /// The device-wide view as a [`MemoryProbe`] named `nvml_device`.
    pub fn device_probe(&self) -> NvmlProbe<'_> {
        NvmlProbe {
            sampler: self,
            device: true,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn sample_once(gpu: &Gpu, s: &Shared, before: &BTreeSet<u32>) {
    if let Ok(list) = gpu.processes() {
        let m = match_pid(&list, std::process::id(), before);
        let bytes = match m {
            PidMatch::Own(p) | PidMatch::NewPid(p) => list
                .iter()
                .find(|(q, _)| *q == p)
                .and_then(|(_, b)| *b)
                .unwrap_or(0),
            PidMatch::NotFound => 0,
        };
        s.process_now.store(bytes, Ordering::Relaxed);
        s.process_peak.fetch_max(bytes, Ordering::Relaxed);
        if let Ok(mut p) = s.pid.lock() {
            *p = Some(m);
        }
    }
    if let Ok(m) = gpu.memory() {
        s.device_now.store(m.used, Ordering::Relaxed);
        s.device_peak.fetch_max(m.used, Ordering::Relaxed);
    }
    s.samples.fetch_add(1, Ordering::Relaxed);
}

/// One NVML view of a [`Sampler`]. `current_bytes` samples synchronously; the peak is the
/// largest value seen by the background thread or by a synchronous sample since the reset.
pub struct NvmlProbe<'a> {
    sampler: &'a Sampler,
    device: bool,
}

impl MemoryProbe for NvmlProbe<'_> {
    fn name(&self) -> &'static str {
        if self.device {
            "nvml_device"
        } else {
            "nvml_process"
        }
    }

    fn current_bytes(&self) -> u64 {
        let (p, d) = self.sampler.sample_now();
        if self.device {
            d
        } else {
            p
        }
    }

    fn peak_bytes(&self) -> u64 {
        let (p, d) = self.sampler.sample_now();
        let s = &self.sampler.shared;
        if self.device {
            s.device_peak.load(Ordering::Relaxed).max(d)
        } else {
            s.process_peak.load(Ordering::Relaxed).max(p)
        }
    }

    fn reset_peak(&self) {
        let (p, d) = self.sampler.sample_now();
        let s = &self.sampler.shared;
        if self.device {
            s.device_peak.store(d, Ordering::Relaxed);
        } else {
            s.process_peak.store(p, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_wins() {
        let list = [(10, Some(5)), (42, Some(7))];
        assert_eq!(match_pid(&list, 42, &BTreeSet::new()), PidMatch::Own(42));
    }

    #[test]
    fn the_one_new_pid_is_ours_in_a_container() {
        let list = [(10, Some(5)), (99_001, Some(7))];
        let before = BTreeSet::from([10]);
        assert_eq!(match_pid(&list, 42, &before), PidMatch::NewPid(99_001));
    }

    #[test]
    fn two_new_pids_are_ambiguous() {
        let list = [(10, Some(5)), (11, Some(7))];
        assert_eq!(match_pid(&list, 42, &BTreeSet::new()), PidMatch::NotFound);
    }

    #[test]
    fn without_a_gpu_open_says_unavailable() {
        // This machine (and CI) has no NVIDIA driver: the error must say so plainly.
        if let Err(e) = Gpu::open(0) {
            assert!(e.to_string().starts_with("NVML not available"), "{e}");
        }
    }
}
