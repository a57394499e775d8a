//! The daemon's GPU view: a snapshot polled in the background (default every 5 s) and read
//! by every scrape, so a scrape never waits on NVML's driver lock.
//!
//! NVML can fail after start (a container after `systemctl daemon-reload` loses its device
//! nodes): the poller then reports `up = false`, drops its handle, and retries with
//! exponential backoff (poll interval x 2^k, at most 60 s), initialising NVML afresh each
//! time, until it answers again; no restart needed.
//!
//! [`FakeNvml`] is a fake for machines without a GPU (named as such wherever it appears): it
//! reads the devices from a JSON file at every poll, so a test can make it fail and recover.

use crate::probe::nvml::{DeviceSnapshot, Fleet, NvmlError};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Where the snapshot comes from.
pub trait GpuSource: Send + 'static {
    /// Every device now; an error marks NVML down.
    ///
    /// # Errors
    /// Why there is no answer.
    fn collect(&mut self, processes: bool) -> Result<Vec<DeviceSnapshot>, String>;
}

/// The real NVML: opened lazily, dropped after a failure and opened again on the next try.
#[derive(Default)]
pub struct Nvml {
    fleet: Option<Fleet>,
}

impl GpuSource for Nvml {
    fn collect(&mut self, processes: bool) -> Result<Vec<DeviceSnapshot>, String> {
        if self.fleet.is_none() {
            self.fleet = Some(Fleet::open().map_err(|e| e.to_string())?);
        }
        let result = self.fleet.as_ref().map_or_else(
            || Err(NvmlError::Unavailable("not open".into())),
            |f| f.snapshot(processes),
        );
        result.map_err(|e| {
            self.fleet = None; // start afresh next time
            e.to_string()
        })
    }
}

/// FAKE NVML for machines without a GPU (tests, demos): the devices are read from a JSON
/// file at every poll: `{"devices": [DeviceSnapshot...]}`, or `{"fail": "message"}` to
/// simulate NVML failing.
pub struct FakeNvml {
    pub path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeFile {
    #[serde(default)]
    devices: Vec<DeviceSnapshot>,
    #[serde(default)]
    fail: Option<String>,
}

impl GpuSource for FakeNvml {
    fn collect(&mut self, processes: bool) -> Result<Vec<DeviceSnapshot>, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("fake NVML {}: {e}", self.path.display()))?;
        let f: FakeFile = serde_json::from_str(&text)
            .map_err(|e| format!("fake NVML {}: {e}", self.path.display()))?;
        if let Some(m) = f.fail {
            return Err(format!("fake NVML: {m}"));
        }
        Ok(f.devices
            .into_iter()
            .map(|mut d| {
                if !processes {
                    d.processes.clear();
                    for m in &mut d.mig {
                        m.processes.clear();
                    }
                }
                d
            })
            .collect())
    }
}

/// What the last polls found.
#[derive(Debug, Clone, Default)]
pub struct GpuState {
    /// Did the last poll succeed?
    pub up: bool,
    /// The devices of the last successful poll (kept while NVML is down, but not exported).
    pub devices: Vec<DeviceSnapshot>,
    /// When the last poll succeeded, and how long the last poll took.
    pub last_success: Option<SystemTime>,
    pub last_duration: Duration,
    pub failures_total: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// The devices' processes attributed to containers (when on).
    pub attribution: Option<super::pods::Attribution>,
    /// Container series left out by the cap, summed over polls.
    pub containers_dropped_total: u64,
}

/// Attribution of processes to containers, done by the poller after each collection.
#[derive(Debug)]
pub struct Attributor {
    pub resolver: super::pods::Resolver,
    /// The most container series exported.
    pub cap: usize,
}

/// The next wait: the poll interval after a success, doubling per consecutive failure up
/// to 60 s (never below the poll interval).
pub fn backoff(interval: Duration, consecutive_failures: u32) -> Duration {
    if consecutive_failures == 0 {
        return interval;
    }
    let cap = Duration::from_secs(60).max(interval);
    let factor = 1u32 << consecutive_failures.min(16);
    interval.saturating_mul(factor).min(cap)
}

/// Poll `source` until `stop` receives (or its sender is dropped), writing into `state`.
/// Runs on its own thread: NVML calls block. Between polls it sleeps in `recv_timeout`, so
/// an idle daemon wakes once per poll and stops at once.
pub fn poll(
    mut source: Box<dyn GpuSource>,
    interval: Duration,
    processes: bool,
    mut attributor: Option<Attributor>,
    state: Arc<RwLock<GpuState>>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    loop {
        let start = Instant::now();
        let result = source.collect(processes || attributor.is_some());
        // /proc is read here, off the lock: a scrape never waits on it.
        let attribution = match (&result, attributor.as_mut()) {
            (Ok(devices), Some(a)) => Some(super::pods::attribute(devices, &mut a.resolver, a.cap)),
            _ => None,
        };
        let took = start.elapsed();
        let wait = {
            let mut s = state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.last_duration = took;
            match result {
                Ok(devices) => {
                    if !s.up && s.consecutive_failures > 0 {
                        tracing::info!(after = s.consecutive_failures, "NVML answers again");
                    }
                    s.up = true;
                    if let Some(a) = &attribution {
                        s.containers_dropped_total += a.dropped;
                    }
                    s.attribution = attribution;
                    s.devices = devices;
                    s.last_success = Some(SystemTime::now());
                    s.consecutive_failures = 0;
                    s.last_error = None;
                }
                Err(e) => {
                    if s.consecutive_failures == 0 {
                        tracing::warn!(error = %e, "NVML collection failed; retrying with backoff");
                    }
                    s.up = false;
                    s.failures_total += 1;
                    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                    s.last_error = Some(e);
                }
            }
            backoff(interval, s.consecutive_failures)
        };
        match stop.recv_timeout(wait) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let i = Duration::from_secs(5);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), Duration::from_secs(10));
        assert_eq!(backoff(i, 2), Duration::from_secs(20));
        assert_eq!(backoff(i, 4), Duration::from_secs(60));
        assert_eq!(backoff(i, 1000), Duration::from_secs(60));
        // An interval above the cap is never shortened.
        assert_eq!(
            backoff(Duration::from_secs(120), 3),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_fake_fails_and_recovers_with_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nvml.json");
        let mut f = FakeNvml { path: path.clone() };
        assert!(f.collect(false).is_err(), "missing file");
        std::fs::write(&path, r#"{"fail": "GPU is lost"}"#).expect("write");
        assert!(f.collect(false).expect_err("fails").contains("GPU is lost"));
        std::fs::write(&path, r#"{"devices": []}"#).expect("write");
        assert_eq!(f.collect(false).expect("ok"), vec![]);
        std::fs::write(&path, r#"{"devics": []}"#).expect("write");
        assert!(f.collect(false).expect_err("typo").contains("devics"));
    }
}
