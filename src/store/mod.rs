//! A run directory: `run.json` (what ran, where, with which versions) and `points.jsonl`
//! (one JSON object per measured point, appended, flushed and synced as each completes, so
//! an interrupted sweep keeps every point it finished).

mod point;
mod run_info;

pub use point::*;
pub use run_info::*;

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

/// Errors of the run directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: already holds a run (points.jsonl exists); choose another --out")]
    Exists { path: PathBuf },
    #[error(
        "{path}: holds other files and is not a vramprobe run directory; choose a new or \
         empty --out"
    )]
    NotARun { path: PathBuf },
    #[error(
        "{path}: in use by process {holder} (another bench or a daemon's sweep writes this \
         run); wait for it to end or choose another --out"
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "{path}: only {free} bytes free on its filesystem, {need} needed for a run's points \
         and report (set VRAMPROBE_MIN_FREE_BYTES to change the requirement)"
    )]
    Full { path: PathBuf, free: u64, need: u64 },
    #[error("{path}: line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Free space a run needs before it starts: its points (a few KB each), report.json/md/html
/// and plots (under 1 MB for a large grid), with a margin. `VRAMPROBE_MIN_FREE_BYTES`
/// overrides it.
pub const MIN_FREE_BYTES: u64 = 16 << 20;

/// Refuse a directory whose filesystem is (nearly) full, before anything is measured.
fn check_free_space(path: &Path) -> Result<(), StoreError> {
    let need = std::env::var("VRAMPROBE_MIN_FREE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_FREE_BYTES);
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    // The field types differ between platforms (u32 on some 32-bit targets).
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    if free < need {
        return Err(StoreError::Full {
            path: path.to_path_buf(),
            free,
            need,
        });
    }
    Ok(())
}

/// The lock file of a run directory: held (flock, exclusive) by the one process that writes
/// the run, with that process's id inside for the message another one gets.
pub const LOCK_FILE: &str = ".lock";

/// Take the run directory's lock, or say who holds it.
fn lock(dir: &Path) -> Result<Flock<File>, StoreError> {
    let p = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .map_err(io(&p))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(mut held) => {
            held.set_len(0).map_err(io(&p))?;
            writeln!(held, "{}", std::process::id()).map_err(io(&p))?;
            Ok(held)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StoreError::Locked {
            path: dir.to_path_buf(),
            holder: std::fs::read_to_string(&p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "unknown".into()),
        }),
        Err((_, e)) => Err(StoreError::Io {
            path: p,
            source: std::io::Error::from(e),
        }),
    }
}

/// The process id written in `dir`'s lock while another process holds it; None when the
/// run is not being written (no lock file, or a lock nobody holds). Takes nothing: a lock
/// it gets is released at once, and no lock file is created.
pub fn lock_holder(dir: &Path) -> Option<u32> {
    let p = dir.join(LOCK_FILE);
    let f = OpenOptions::new().read(true).write(true).open(&p).ok()?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(_released) => None,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .or(Some(0)),
        Err(_) => None,
    }
}

/// An open run directory being appended to, locked while this value lives.
pub struct RunDir {
    path: PathBuf,
    points: File,
    _lock: Flock<File>,
}

impl RunDir {
    /// Create the directory (and parents), refuse one that already holds points, and
    /// check that it is writable before any measuring starts.
    ///
    /// # Errors
    /// [`StoreError::Exists`] and [`StoreError::Io`].
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        if path.exists() && !path.is_dir() {
            return Err(StoreError::NotARun {
                path: path.to_path_buf(),
            });
        }
        std::fs::create_dir_all(path).map_err(io(path))?;
        check_free_space(path)?;
        let lock = lock(path)?;
        let points_path = path.join("points.jsonl");
        // A run that stopped before its model loaded left an empty points.jsonl and no
        // run.json: nothing to keep, so a new run may start there.
        let failed_start = std::fs::metadata(&points_path).is_ok_and(|m| m.len() == 0)
            && !path.join("run.json").exists();
        if points_path.exists() && !failed_start {
            return Err(StoreError::Exists {
                path: path.to_path_buf(),
            });
        }
        let others = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(Result::ok)
            .any(|e| e.file_name() != LOCK_FILE && e.file_name() != "points.jsonl");
        if others {
            return Err(StoreError::NotARun {
                path: path.to_path_buf(),
            });
        }
        // Appended to, never rewritten (a failed start's points.jsonl is empty).
        let points = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&points_path)
            .map_err(io(&points_path))?;
        Ok(Self {
            path: path.to_path_buf(),
            points,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reopen a run directory to append to it: the points it holds are returned, and a torn
    /// last line (a crash in the middle of a write) is cut off first, so that appending never
    /// buries a broken line in the middle of the file.
    ///
    /// # Errors
    /// [`StoreError::Io`], and [`StoreError::Corrupt`] for a broken line that is not last.
    pub fn reopen(path: &Path) -> Result<(Self, Vec<PointRecord>), StoreError> {
        let lock = lock(path)?;
        check_free_space(path)?;
        let points_path = path.join("points.jsonl");
        let points = read_points(path)?;
        let text = std::fs::read(&points_path).map_err(io(&points_path))?;
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if keep < text.len() {
            let f = OpenOptions::new()
                .write(true)
                .open(&points_path)
                .map_err(io(&points_path))?;
            if serde_json::from_slice::<PointRecord>(&text[keep..]).is_ok() {
                // A complete record whose newline was not written: keep it, end its line.
                (&f).seek(std::io::SeekFrom::End(0))
                    .and_then(|_| (&f).write_all(b"\n"))
                    .map_err(io(&points_path))?;
            } else {
                f.set_len(keep as u64).map_err(io(&points_path))?;
            }
            f.sync_all().map_err(io(&points_path))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&points_path)
            .map_err(io(&points_path))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                points: file,
                _lock: lock,
            },
            points,
        ))
    }

    /// Read `run.json`.
    ///
    /// # Errors
    /// [`StoreError::Io`] and [`StoreError::Corrupt`].
    pub fn read_info(path: &Path) -> Result<RunInfo, StoreError> {
        let p = path.join("run.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: p,
            line: e.line(),
            message: e.to_string(),
        })
    }

    /// Write `run.json` (replacing it atomically).
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn write_info(&self, info: &RunInfo) -> Result<(), StoreError> {
        let final_path = self.path.join("run.json");
        let tmp = self.path.join("run.json.tmp");
        let mut text = serde_json::to_string_pretty(info).unwrap_or_default();
        text.push('\n');
        // Written and synced before the rename, and the directory synced after it: a crash
        // leaves the old run.json or the new one, never an empty one.
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.path))
    }

    /// Write a JSON file of the run (pretty, one trailing newline).
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<(), StoreError> {
        let path = self.path.join(name);
        let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| StoreError::Io { path, source })
    }

    /// Append one point as a line, flushed and synced before returning.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn append(&mut self, point: &PointRecord) -> Result<(), StoreError> {
        let p = self.path.join("points.jsonl");
        let mut line = serde_json::to_string(point).unwrap_or_default();
        line.push('\n');
        self.points.write_all(line.as_bytes()).map_err(io(&p))?;
        self.points.flush().map_err(io(&p))?;
        self.points.sync_data().map_err(io(&p))
    }
}

/// The name of the boundary search's file in a run directory.
pub const BOUNDARY_FILE: &str = "boundary.json";

/// Read a run directory's `boundary.json`: None when the run searched no boundary.
///
/// # Errors
/// [`StoreError::Io`] and [`StoreError::Corrupt`] for a file that is not a boundary list.
pub fn read_boundaries(dir: &Path) -> Result<Option<Vec<Boundary>>, StoreError> {
    let p = dir.join(BOUNDARY_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&p)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: p,
            line: e.line(),
            message: e.to_string(),
        })
}

/// Read a run directory's points.
///
/// # Errors
/// [`StoreError::Io`] and [`StoreError::Corrupt`] (a line that is not a point; a torn
/// last line from a crash is skipped, not an error).
pub fn read_points(dir: &Path) -> Result<Vec<PointRecord>, StoreError> {
    let p = dir.join("points.jsonl");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    parse_points(&text, p)
}

/// What the `run_files` fuzzer runs on one input (split at its first 0 byte into run.json
/// and points.jsonl): the readers `--resume`, `report` and the daemon use.
pub fn fuzz_run_files(data: &[u8]) {
    let (info, points) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    if let Ok(text) = std::str::from_utf8(info) {
        if let Ok(info) = serde_json::from_str::<RunInfo>(text) {
            if let Some(Ok(plan)) = info.plan() {
                let _ = plan.records_planned();
                let _ = plan.to_args();
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(points) {
        if let Ok(points) = parse_points(text, PathBuf::from("points.jsonl")) {
            let _ = crate::bench::tolerance_violations(&points, 0.01);
        }
    }
}

/// The points of a `points.jsonl` text (`path` names it in errors): what [`read_points`]
/// and the `run_files` fuzzer call.
///
/// # Errors
/// [`StoreError::Corrupt`] for a line that is not a point (a torn last line is skipped).
pub fn parse_points(text: &str, p: PathBuf) -> Result<Vec<PointRecord>, StoreError> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let complete = text.ends_with('\n');
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(point) => out.push(point),
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: p,
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// `YYYYMMDD-HHMMSS` in UTC, for default run directory names.
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 3339 UTC time, for `started_at`.
pub fn utc_rfc3339(t: std::time::SystemTime) -> String {
    let s = utc_stamp(t);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps() {
        // 2026-11-26T09:16:47Z
        let t = UNIX_EPOCH + Duration::from_secs(1_795_684_607);
        assert_eq!(utc_stamp(t), "20261126-091647");
        assert_eq!(utc_rfc3339(t), "2026-11-26T09:16:47Z");
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
    }

    fn point(batch: u64) -> PointRecord {
        PointRecord {
            model: "m".into(),
            dtype: "f32".into(),
            engine: "candle-eager".into(),
            device: "cpu".into(),
            batch,
            context: 64,
            phase: PointPhase::Prefill,
            decode_steps: 8,
            estimated_bytes: 110,
            estimated_components: BTreeMap::from([("weights".into(), 110)]),
            measured_peak_bytes: 100,
            source: "host_alloc".into(),
            measured: BTreeMap::from([("host_alloc".into(), 100)]),
            error_ratio: 0.1,
            estimated_above_weights_bytes: 10,
            measured_above_weights_bytes: 0,
            above_weights_error_ratio: f64::NAN,
            secs_per_forward: 0.5,
            tokens_per_sec: 128.0,
            status: Status::Ok,
            estimated_by_source: BTreeMap::new(),
            error_by_source: BTreeMap::new(),
            stage: Stage::Grid,
            message: None,
            decode_trace: Vec::new(),
        }
    }

    #[test]
    fn appended_points_read_back_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(dir.path()).unwrap();
        run.append(&point(1)).unwrap();
        run.append(&point(2)).unwrap();
        // A crash in the middle of the third write.
        let path = dir.path().join("points.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"model\":\"m\",\"bat").unwrap();
        let back = read_points(dir.path()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].batch, 2);
        assert_eq!(back[0].error_ratio, 0.1);
        assert!(
            back[0].above_weights_error_ratio.is_nan(),
            "undefined survives a round trip"
        );

        // A bad line that is not the last is corruption, named by line.
        f.write_all(b"\n").unwrap();
        run.append(&point(3)).unwrap();
        let err = read_points(dir.path()).unwrap_err().to_string();
        assert!(err.contains("points.jsonl: line 3"), "{err}");

        // While a process writes the run, no other may: the lock names it.
        let held = RunDir::reopen(dir.path()).err().expect("locked");
        assert!(
            matches!(&held, StoreError::Locked { holder, .. } if *holder == std::process::id().to_string()),
            "{held}"
        );
        drop(run);
        // The directory now holds a run: it is never reused.
        assert!(matches!(
            RunDir::create(dir.path()),
            Err(StoreError::Exists { .. })
        ));
    }

    /// A record complete but for its newline (a crash between the two writes) is kept by
    /// resume, which ends its line; a torn one is cut.
    #[test]
    fn resume_keeps_a_complete_record_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(dir.path()).unwrap();
        run.append(&point(1)).unwrap();
        drop(run);
        let path = dir.path().join("points.jsonl");
        let mut line = serde_json::to_string(&point(2)).unwrap();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let (mut run, stored) = RunDir::reopen(dir.path()).unwrap();
        assert_eq!(stored.len(), 2);
        run.append(&point(3)).unwrap();
        let back = read_points(dir.path()).unwrap();
        let batches: Vec<u64> = back.iter().map(|p| p.batch).collect();
        assert_eq!(batches, [1, 2, 3]);
        drop(run);
        // A torn record is cut, and appending goes on after the last whole line.
        line.truncate(line.len() / 2);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let (mut run, stored) = RunDir::reopen(dir.path()).unwrap();
        assert_eq!(stored.len(), 3);
        run.append(&point(4)).unwrap();
        assert_eq!(read_points(dir.path()).unwrap().len(), 4);
    }

    /// `--out` at a directory of other files, or at a file, is refused; a run that never
    /// loaded its model left an empty points.jsonl, and a new run may start there.
    #[test]
    fn only_new_empty_or_failed_start_directories_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("photos");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("cat.jpg"), b"meow").unwrap();
        assert!(matches!(
            RunDir::create(&other),
            Err(StoreError::NotARun { .. })
        ));
        assert_eq!(std::fs::read(other.join("cat.jpg")).unwrap(), b"meow");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            RunDir::create(&file),
            Err(StoreError::NotARun { .. })
        ));
        let failed = dir.path().join("failed");
        drop(RunDir::create(&failed).unwrap());
        let mut again = RunDir::create(&failed).unwrap();
        again.append(&point(1)).unwrap();
        assert_eq!(read_points(&failed).unwrap().len(), 1);
    }

    #[test]
    fn error_ratio_signs() {
        assert_eq!(error_ratio(110, 100), 0.1);
        assert_eq!(error_ratio(90, 100), -0.1);
        assert_eq!(error_ratio(0, 0), 0.0);
        assert!(error_ratio(5, 0).is_nan());
    }
}

#[cfg(test)]
mod bytes_tests {
    use super::*;

    /// run.json keeps its bytes: the committed H100 runs read back and written again are
    /// the same files, `settings` (now the typed plan) included.
    #[test]
    fn committed_run_json_round_trips_byte_for_byte() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/gpu/2026-11-26-h100-80gb");
        let mut seen_settings = 0;
        for run in ["tiny-1gib-boundary", "llama3-8b-40gib-boundary"] {
            let path = dir.join(run).join("run.json");
            let text = std::fs::read_to_string(&path).unwrap();
            let info: RunInfo = serde_json::from_str(&text).unwrap();
            seen_settings += usize::from(info.settings.is_some());
            let mut again = serde_json::to_string_pretty(&info).unwrap();
            again.push('\n');
            assert_eq!(again, text, "{}", path.display());
        }
        assert!(seen_settings >= 1, "no committed run has settings to check");
    }

    /// The plan as `settings` in the fields and order run.json always had; training adds
    /// `mode` and `lora`.
    #[test]
    fn settings_are_written_as_before() {
        let plan = crate::plan::BenchPlan::default();
        assert_eq!(
            serde_json::to_string(&plan).unwrap(),
            r#"{"model":null,"revision":null,"dtype":"f32","weights":"synthetic","seed":0,"device":"cpu","nvml_hz":50,"find_boundary":null,"memory_limit":null,"max_position":null}"#
        );
        let train = crate::plan::BenchPlan {
            mode: crate::plan::Mode::Train,
            lora: Some(crate::estimate::candle_train::LoraSetup {
                rank: 8,
                targets: crate::plan::DEFAULT_LORA_TARGETS.to_vec(),
            }),
            ..crate::plan::BenchPlan::default()
        };
        let text = serde_json::to_string(&train).unwrap();
        assert!(
            text.ends_with(
                r#""max_position":null,"mode":"train","lora":{"rank":8,"targets":["q","v"]}}"#
            ),
            "{text}"
        );
    }
}
