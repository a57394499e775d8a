//! The stored runs under the daemon's runs directory, cached: reloaded in the background when
//! a run's points.jsonl changes (size or modification time), so a scrape or an API call
//! only reads memory.

use crate::store::{self, PointRecord, RunInfo};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One run directory as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRun {
    /// The directory's name.
    pub id: String,
    pub run: RunInfo,
    pub points: Vec<PointRecord>,
    /// Why its points could not be read in full, if so (the run is still listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip)]
    stamp: (u64, Option<SystemTime>),
}

/// Every run, by directory name (so in time order for `bench`'s names).
#[derive(Debug, Clone, Default)]
pub struct Runs {
    pub by_id: BTreeMap<String, StoredRun>,
}

fn stamp(path: &Path) -> (u64, Option<SystemTime>) {
    std::fs::metadata(path.join("points.jsonl"))
        .map(|m| (m.len(), m.modified().ok()))
        .unwrap_or((0, None))
}

impl Runs {
    /// Bring the cache up to date with `dir`: new runs read, changed ones re-read, removed
    /// ones dropped. A directory without run.json is not a run and is skipped. Returns
    /// whether anything changed.
    pub fn refresh(&mut self, dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            let changed = !self.by_id.is_empty();
            self.by_id.clear();
            return changed;
        };
        let mut seen: Vec<String> = Vec::new();
        let mut changed = false;
        for e in entries.flatten() {
            let path: PathBuf = e.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !path.join("run.json").is_file() {
                continue;
            }
            seen.push(id.clone());
            let now = stamp(&path);
            if self.by_id.get(&id).is_some_and(|r| r.stamp == now) {
                continue;
            }
            let Ok(run) = store::RunDir::read_info(&path) else {
                continue; // being written, or not ours: try again next refresh
            };
            // Only regular files are read: a FIFO (or a device) named points.jsonl would
            // block the read forever.
            let points_file = path.join("points.jsonl");
            let regular = std::fs::symlink_metadata(&points_file).map(|m| m.is_file());
            if matches!(regular, Ok(false)) {
                self.by_id.insert(
                    id.clone(),
                    StoredRun {
                        id,
                        run,
                        points: Vec::new(),
                        problem: Some("points.jsonl is not a regular file: not read".into()),
                        stamp: now,
                    },
                );
                changed = true;
                continue;
            }
            let (points, problem) = match store::read_points(&path) {
                Ok(p) => (p, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            self.by_id.insert(
                id.clone(),
                StoredRun {
                    id,
                    run,
                    points,
                    problem,
                    stamp: now,
                },
            );
            changed = true;
        }
        let before = self.by_id.len();
        self.by_id.retain(|id, _| seen.contains(id));
        changed || before != self.by_id.len()
    }

    /// Has `dir` anything this cache lacks: a run added, removed or grown? (Directory
    /// listing and one stat per run; nothing is read.)
    pub fn stale(&self, dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return !self.by_id.is_empty();
        };
        let mut n = 0;
        for e in entries.flatten() {
            let path = e.path();
            if !path.join("run.json").is_file() {
                continue;
            }
            n += 1;
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if self.by_id.get(id).is_none_or(|r| r.stamp != stamp(&path)) {
                return true;
            }
        }
        n != self.by_id.len()
    }

    /// The newest run (by start time, then name) of each (model, dtype, engine, device): what
    /// /metrics exports, so one label set never has two values.
    pub fn latest(&self) -> Vec<&StoredRun> {
        let mut best: BTreeMap<(String, String, String, String), &StoredRun> = BTreeMap::new();
        for r in self.by_id.values() {
            let key = (
                r.run.model.clone(),
                r.run.dtype.clone(),
                r.run.engine.clone(),
                r.run.device.clone(),
            );
            let newer = best
                .get(&key)
                .is_none_or(|b| (&r.run.started_at, &r.id) > (&b.run.started_at, &b.id));
            if newer {
                best.insert(key, r);
            }
        }
        best.into_values().collect()
    }
}
